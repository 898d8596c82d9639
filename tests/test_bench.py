"""``gruablate run bench`` and :mod:`gruablate.bench`: records, store, table, errors.

Tiny grids only: these tests check what is measured and written, never how fast.
"""

from __future__ import annotations

import importlib.util
import math

import numba
import pytest
from click.testing import CliRunner

from gruablate import get_variant, load_results
from gruablate.bench import (
    BenchConfig,
    BenchError,
    format_table,
    record_id,
    run_bench,
    summarise,
    write_records,
)
from gruablate.cli import main
from gruablate.store import BENCH_COLUMNS

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY = dict(hidden=(4,), batch=(2,), seq_len=(3,), repeats=1, rounds=1, warmup=1,
            peak_size=64, threads=1)


def test_records_have_the_contract_columns_and_consistent_numbers():
    cfg = BenchConfig(variants=("gru", "mingru"), modes=("inference", "train", "stream"),
                      **TINY)
    recs = run_bench(cfg)
    bench = [r for r in recs if r["kind"] == "bench"]
    peaks = [r for r in recs if r["kind"] == "peak"]
    assert {r["impl"] for r in peaks} >= {"gruablate", "numpy"}
    assert len(bench) == 2 * 3
    peak = max(r["gflops"] for r in peaks)
    for r in bench:
        assert set(BENCH_COLUMNS) <= set(r)
        assert r["impl"] == "gruablate" and r["backend"] == "cpu" and r["threads"] == 1
        assert (r["hidden"], r["batch"], r["seq_len"], r["input_size"]) == (4, 2, 3, 4)
        assert 0 < r["min_ms"] <= r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] <= r["max_ms"]
        flop_mode = "train" if r["mode"] == "train" else "inference"
        flops = get_variant(r["variant"]).flops(4, 4, 2, 3, flop_mode)
        assert r["flops"] == flops
        assert math.isclose(r["gflops"], flops / (r["median_ms"] * 1e-3) / 1e9)
        assert math.isclose(r["seq_per_s"], 2 / (r["median_ms"] * 1e-3))
        assert math.isclose(r["step_us"], r["median_ms"] * 1e3 / 3)
        assert math.isclose(r["peak_fraction"], r["gflops"] / peak)
        assert r["torch_ratio"] is None


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch")
def test_torch_peers_are_timed_beside_their_counterparts():
    cfg = BenchConfig(variants=("gru_reset_after", "lstm", "gru"), peers=("torch",),
                      modes=("inference", "train", "stream"), peak=False, **{
                          k: v for k, v in TINY.items() if k != "peak_size"})
    recs = run_bench(cfg)
    torch_rows = [r for r in recs if r["impl"] == "torch"]
    assert {(r["variant"], r["mode"]) for r in torch_rows} == {
        (v, m) for v in ("gru_reset_after", "lstm") for m in ("inference", "train", "stream")}
    ours = {(r["variant"], r["mode"]): r for r in recs if r["impl"] == "gruablate"}
    for r in torch_rows:
        mine = ours[(r["variant"], r["mode"])]
        assert math.isclose(mine["torch_ratio"], r["median_ms"] / mine["median_ms"])
    assert all(ours[("gru", m)]["torch_ratio"] is None for m in ("inference", "train"))
    assert all(r["peak_fraction"] is None for r in recs)


def test_records_round_trip_through_the_run_directory(tmp_path):
    recs = run_bench(BenchConfig(variants=("rnn",), **TINY))
    path = write_records(tmp_path / "run", recs, study={"kind": "bench"})
    df = load_results(path)
    assert len(df) == len(recs)
    bench = df[df["kind"] == "bench"]
    assert list(df.columns[:3]) == ["run", "id", "kind"]
    assert set(BENCH_COLUMNS) <= set(df.columns)
    assert (bench["median_ms"] > 0).all() and (bench["gflops"] > 0).all()
    assert len({record_id(r) for r in recs}) == len(recs)


def test_summarise_gives_median_and_spread():
    s = summarise([0.001, 0.002, 0.003, 0.004, 0.100])
    assert s["median_ms"] == pytest.approx(3.0)
    assert s["p25_ms"] == pytest.approx(2.0) and s["p75_ms"] == pytest.approx(4.0)
    assert s["spread"] == pytest.approx(2.0 / 3.0)
    assert s["n"] == 5 and s["max_ms"] == pytest.approx(100.0)


def test_table_lists_every_measurement():
    recs = run_bench(BenchConfig(variants=("gru",), **TINY))
    text = format_table(recs)
    assert "matrix-product peak" in text and "median ms" in text and "GFLOP/s" in text
    assert sum(line.startswith("gru ") for line in text.splitlines()) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(variants=("nope",)), "--variants: unknown variant 'nope'"),
        (dict(modes=("fast",)), "--modes: unknown value 'fast'"),
        (dict(dtypes=("float16",)), "--dtypes: unknown value 'float16'"),
        (dict(hidden=(0,)), "--hidden: sizes must be positive integers"),
        (dict(repeats=0), "--repeats must be an integer >= 1"),
        (dict(threads=10_000), "exceeds Numba's pool"),
        (dict(peers=("tensorflow",)), "--peers: unknown value 'tensorflow'"),
    ],
)
def test_bad_options_give_one_line_errors(change, message):
    with pytest.raises(BenchError, match=message.replace("(", r"\(")) as info:
        BenchConfig(**{**TINY, **change}).validate()
    assert "\n" not in str(info.value)


def test_threads_default_to_usable_cores_within_numba_pool():
    cfg = BenchConfig(variants=("gru",)).validate()
    assert 1 <= cfg.threads <= numba.config.NUMBA_NUM_THREADS


def test_cli_writes_run_directory_and_prints_table(tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(main, [
        "run", "bench", "--variants", "gru,lstm", "--hidden", "4", "--batch", "2",
        "--seq-len", "3", "--input-size", "same,5", "--repeats", "1", "--rounds", "1",
        "--warmup", "1", "--peak-size", "64", "--threads", "1", "--out", str(out), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "median ms" in result.output and f"→ {out}" in result.output
    df = load_results(out)
    bench = df[df["kind"] == "bench"]
    assert len(bench) == 2 * 2 * 2  # variants x modes x input sizes
    assert set(bench["input_size"]) == {4, 5}
    assert (bench["threads"] == 1).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", "a,b"], "--hidden: 'a' is not an integer"),
        (["--modes", "train,sprint"], "--modes: unknown value 'sprint'"),
        (["--variants", "gru,missing.toml"], "variant spec file not found"),
        (["--threads", "999"], "exceeds Numba's pool"),
        (["--variants", "mut1", "--input-size", "4", "--hidden", "8"],
         "--input-size: variant 'mut1' reads x element-wise"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["run", "bench", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_foreign_output_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["run", "bench", "--variants", "gru", "--hidden", "4",
                                       "--out", str(tmp_path), "--no-peak"])
    assert result.exit_code == 2
    assert "not a gruablate run directory" in result.output


def test_each_case_is_timed_after_a_rest_for_the_other_librarys_threads(monkeypatch):
    """Another library's idle threads spin on the cores for a while; every case's calls
    start after a rest of SETTLE_SECONDS, in every round."""
    import gruablate.bench as bench

    events = []
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("rest", s)))
    cases = [bench.Case({"impl": name}, lambda name=name: events.append(name))
             for name in ("ours", "peer")]
    bench.time_cases(cases, warmup=0, rounds=2, repeats=1)
    rests = [i for i, e in enumerate(events) if isinstance(e, tuple)]
    assert len(rests) == 4 and all(events[i] == ("rest", bench.SETTLE_SECONDS) for i in rests)
    # each rest is followed by one case's untimed and timed calls, never split
    for i in rests:
        assert events[i + 1] == events[i + 2] and not isinstance(events[i + 1], tuple)
