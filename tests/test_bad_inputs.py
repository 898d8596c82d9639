"""Bad input, as a careful user and a hostile spec author give it: every case is refused
with exit status 2 (1 for a run that started), one ``Error:`` line that names the
problem, no traceback, and nothing written anywhere but the output folder — checked
over the whole working folder, before any training, benchmark or report work.

Each case is (command line, words the error must contain). ``{in}`` is a folder of
prepared bad files, ``{out}`` the output folder a command is allowed to write in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gruablate.cli import main

GOOD_SPEC = 'name = "mine"\nfamily = "gru"\n'
SPECS = {
    "binary.toml": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
    "malformed.toml": b'name = "x\nfamily = gru',
    "unknown_key.toml": b'name = "mine"\nfamily = "gru"\nwings = 2\n',
    "slash_name.toml": b'name = "../../escaped/TRAVERSED"\nfamily = "gru"\n',
    "newline_name.toml": b'name = "a\\nb"\nfamily = "gru"\n',
    "shadow.toml": b'name = "gru"\nfamily = "lstm"\n',
    "nan_bias.toml": b'name = "mine"\nfamily = "lstm"\nforget_bias = nan\n',
    "huge_bias.toml": b'name = "mine"\nfamily = "lstm"\nforget_bias = 1e300\n',
    "bad_family.toml": b'name = "mine"\nfamily = "transformer"\n',
    "empty.toml": b"",
    "study_bad.toml": b"[[[",
    "study_unknown.toml": b'name = "s"\nwings = 2\n',
    "study_binary.toml": b"\xff\xfe\x00\x01",
    "a_file": b"not a folder",
}

TRAIN = ["run", "train", "--steps", "3", "--hidden", "4", "--no-progress",
         "--out", "{out}"]
SWEEP = ["run", "sweep", "--steps", "3", "--hidden", "4", "--seeds", "0", "--variants",
         "gru", "--tasks", "adding", "--no-report", "--out", "{out}"]
BENCH = ["run", "bench", "--quiet", "--no-peak", "--hidden", "8", "--out", "{out}"]

CASES: list[tuple[list[str], str]] = [
    # ----------------------------------------------------------- run train
    (TRAIN + ["--hidden", "0"], "'--hidden'"),
    (TRAIN + ["--hidden", "-5"], "'--hidden'"),
    (TRAIN + ["--hidden", "abc"], "'--hidden'"),
    (TRAIN + ["--hidden", "50000"], "GiB of memory"),
    (TRAIN + ["--layers", "0"], "'--layers'"),
    (TRAIN + ["--layers", "100000"], "layers must be at most 64"),
    (TRAIN + ["--steps", "0"], "'--steps'"),
    (TRAIN + ["--batch", "0"], "'--batch'"),
    (TRAIN + ["--batch", "100000000"], "GiB of memory"),
    (TRAIN + ["--lr", "0"], "lr must be a positive finite number"),
    (TRAIN + ["--lr", "-1"], "lr must be a positive finite number"),
    (TRAIN + ["--lr", "inf"], "lr must be a positive finite number"),
    (TRAIN + ["--lr", "nan"], "lr must be a positive finite number"),
    (TRAIN + ["--clip", "-1"], "clip must be a finite number"),
    (TRAIN + ["--clip", "inf"], "clip must be a finite number"),
    (TRAIN + ["--warmup", "-1"], "'--warmup'"),
    (TRAIN + ["--warmup", "50"], "warmup (50 steps) is longer than the run"),
    (TRAIN + ["--seed", "-1"], "'--seed'"),
    (TRAIN + ["--eval-every", "0"], "'--eval-every'"),
    (TRAIN + ["--blas-threads", "-1"], "'--blas-threads'"),
    (TRAIN + ["--dtype", "float16"], "'--dtype'"),
    (TRAIN + ["--backend", "tpu"], "'--backend'"),
    (TRAIN + ["--init", "xavier"], "'--init'"),
    (TRAIN + ["--decay", "exp"], "'--decay'"),
    (TRAIN + ["--task", "sorting"], "'--task'"),
    (TRAIN + ["--seq-len", "1000000000"], "seq_len must be at most 10000"),
    (TRAIN + ["--seq-len", "1"], "seq_len must be at least 2"),
    (TRAIN + ["--task", "copy", "--delay", "0"], "delay must be at least 1"),
    (TRAIN + ["--task", "copy", "--delay", "100000000"], "must be at most 10000"),
    (TRAIN + ["--task", "copy", "--alphabet", "1"], "alphabet must be at least 2"),
    (TRAIN + ["--delay", "5"], "task 'adding' has no option 'delay'"),
    (TRAIN + ["--task", "digits", "--mode", "diagonal"], "'--mode'"),
    (TRAIN + ["--task", "charlm", "--path", "{in}/missing.txt"], "not found"),
    (TRAIN + ["--variant", "grux"], "unknown variant 'grux'"),
    (TRAIN + ["--variant", "{in}/missing.toml"], "missing.toml"),
    (TRAIN + ["--variant", "{in}/binary.toml"], "is not UTF-8 text"),
    (TRAIN + ["--variant", "{in}/malformed.toml"], "malformed TOML"),
    (TRAIN + ["--variant", "{in}/unknown_key.toml"], "wings"),
    (TRAIN + ["--variant", "{in}/slash_name.toml"], "variant name"),
    (TRAIN + ["--variant", "{in}/newline_name.toml"], "variant name"),
    (TRAIN + ["--variant", "{in}/shadow.toml"], "'gru'"),
    (TRAIN + ["--variant", "{in}/nan_bias.toml"], "forget_bias"),
    (TRAIN + ["--variant", "{in}/huge_bias.toml"], "forget_bias"),
    (TRAIN + ["--variant", "{in}/bad_family.toml"], "family"),
    (TRAIN + ["--variant", "{in}/empty.toml"], "name"),
    (TRAIN + ["--out", "/proc/no/such/record.json"], "cannot write in /proc/no/such"),
    (TRAIN + ["--out", "{in}/a_file"], "exists and is not a folder"),
    (TRAIN + ["--out", "{in}/a_file/record.json"], "'--out'"),
    (TRAIN + ["--out", "{out}/" + "x" * 300 + ".json"], "longer than 255 bytes"),
    (TRAIN + ["--out", "{out}/bad\x00name.json"], "NUL"),
    # ----------------------------------------------------------- run sweep
    (SWEEP + ["--steps", "0"], "steps"),
    (SWEEP + ["--lr", "inf"], "lr"),
    (SWEEP + ["--warmup", "10"], "longer than the run"),
    (SWEEP + ["--layers", "100"], "layers must be at most 64"),
    (SWEEP + ["--hidden", "0"], "hidden"),
    (SWEEP + ["--hidden", "50000"], "GiB of memory"),
    (SWEEP + ["--seeds", "0-100000000"], "seeds"),
    (SWEEP + ["--seeds", "abc"], "seeds"),
    (SWEEP + ["--tasks", "sorting"], "unknown task 'sorting'"),
    (SWEEP + ["--variants", "grux"], "grux"),
    (SWEEP + ["--variants", "{in}/slash_name.toml"], "variant name"),
    (SWEEP + ["--variants", "{in}/shadow.toml"], "'gru'"),
    (SWEEP + ["--backends", "tpu"], "unknown backend 'tpu'"),
    (SWEEP + ["--dtype", "float16"], "dtype"),
    (SWEEP + ["--decay", "exp"], "decay"),
    (SWEEP + ["--jobs", "0"], "'--jobs'"),
    (SWEEP + ["--executor", "dask"], "--scheduler"),
    (SWEEP + ["-o", "adding.seq_len=1000000000"], "seq_len must be at most 10000"),
    (SWEEP + ["-o", "adding.wings=2"], "wings"),
    (SWEEP + ["--config", "{in}/missing.toml"], "missing.toml"),
    (SWEEP + ["--config", "{in}/study_bad.toml"], "study_bad.toml"),
    (SWEEP + ["--config", "{in}/study_unknown.toml"], "wings"),
    (SWEEP + ["--config", "{in}/study_binary.toml"], "study_binary.toml"),
    (SWEEP + ["--out", "{in}/a_file"], "a_file"),
    # ----------------------------------------------------------- run bench
    (BENCH + ["--hidden", "512", "--batch", "100000"], "GiB of memory"),
    (BENCH + ["--hidden", "0"], "--hidden"),
    (BENCH + ["--variants", "grux"], "grux"),
    (BENCH + ["--dtypes", "float16"], "float16"),
    (BENCH + ["--modes", "fly"], "fly"),
    (BENCH + ["--backends", "tpu"], "tpu"),
    (BENCH + ["--threads", "0"], "'--threads'"),
    (BENCH + ["--repeats", "0"], "'--repeats'"),
    (["run", "bench", "--quiet", "--peak-size", "100000", "--out", "{out}"], "--peak-size"),
    # ---------------------------------------------------- variants, report
    (["variants", "show", "grux"], "grux"),
    (["variants", "show", "gru", "--hidden", "-5"], "'--hidden'"),
    (["variants", "show", "gru", "--input-size", "0"], "'--input-size'"),
    (["variants", "show", "{in}/binary.toml"], "is not UTF-8 text"),
    (["variants", "show", "{in}/slash_name.toml"], "variant name"),
    (["report", "{in}/no_such_run"], "no_such_run"),
    (["report", "{in}/a_file"], "a_file"),
    (["report", "{in}"], "is not a gruablate run directory"),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data in SPECS.items():
        (inputs / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_there_are_enough_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("argv,expected", CASES,
                         ids=[f"{i:02d}-{' '.join(a[:2])}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_and_writes_nothing(work, argv, expected):
    out = work / "out"
    args = [a.replace("{in}", str(work / "in")).replace("{out}", str(out)) for a in argv]
    before = _tree(work)
    result = CliRunner().invoke(main, args)
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert expected in errors[0], errors[0]
    after = _tree(work)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not changed, f"files changed by a refused command: {sorted(changed)}"
