"""`gruablate report`: files exist, images decode, the HTML embeds everything it shows,
output is byte-stable, failed cells are marked, bench runs show PyTorch ratios."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner

import gruablate
from gruablate.cli import main
from gruablate.execute import run_study
from gruablate.store import open_run
from gruablate.study import load_study

FIGS = ("accuracy", "curves", "speed", "tradeoff", "params")
# The sweep below overflows on purpose; numpy's warnings about it are expected.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A real tiny sweep in which the adding cells cannot succeed: a learning rate of
    1e30 overflows float32 at once, so those cells end failed or diverged."""
    root = tmp_path_factory.mktemp("report")
    cfg = root / "tiny.toml"
    cfg.write_text(
        'name = "tiny"\nvariants = ["gru", "mingru"]\nhidden = [8, 16]\nseeds = "0-1"\n'
        "steps = 20\nbatch = 8\nlr = 0.01\n"
        "[tasks.adding]\nseq_len = 8\nlr = 1e30\nclip = false\n"
        "[tasks.copy]\ndelay = 3\nsymbols = 2\n"
    )
    summary = run_study(load_study(cfg), out=root / "tiny", jobs=1)
    assert summary.ok == 8 and summary.failed + summary.diverged == 8
    return root / "tiny"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    """A bench run directory written through the store API the benchmark uses.

    The numbers are made up for this rendering test only (the benchmark command
    lands separately); they are chosen so that the expected ratios are exact.
    """
    run = open_run(tmp_path_factory.mktemp("bench") / "bench", {"kind": "bench"},
                   env={"cpu": "test cpu", "cores": 2})
    for variant in ("gru_reset_after", "lstm"):
        for mode in ("inference", "train"):
            for h in (32, 64, 128):
                for impl, ms in (("gruablate", h / 32), ("torch", h / 16)):
                    run.write_record(f"{variant}-{mode}-{h}-{impl}", {
                        "kind": "bench", "variant": variant, "impl": impl, "backend": "cpu",
                        "mode": mode, "hidden": h, "batch": 32, "seq_len": 100,
                        "input_size": h, "dtype": "float32", "threads": 2,
                        "median_ms": ms, "gflops": 1.0})
    return run.path


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "poster")
                      and v is not None]


@pytest.fixture(scope="module")
def report_dir(sweep_dir) -> Path:
    """The report as the command line writes it (RUN_DIR/report)."""
    res = CliRunner().invoke(main, ["report", str(sweep_dir)])
    assert res.exit_code == 0, res.output
    assert str(sweep_dir / "report" / "report.html") in res.output
    return sweep_dir / "report"


def test_report_files_exist_and_decode(report_dir):
    out = report_dir
    for name in FIGS:
        png = mpimg.imread(out / f"{name}.png")
        assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 300
        root = ET.parse(out / f"{name}.svg").getroot()
        assert root.tag.endswith("svg")
    assert not (out / "speed_ratio.png").exists()  # no bench data, no ratio figure
    md = (out / "report.md").read_text()
    for name in FIGS:
        assert f"({name}.png)" in md
    assert "## Cells that failed or diverged" in md


def test_html_is_self_contained_and_complete(sweep_dir, report_dir):
    html = (report_dir / "report.html").read_text()
    parser = _Refs()
    parser.feed(html)
    assert parser.refs and all(r.startswith(("data:", "#")) for r in parser.refs)
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}
    assert not re.search(r"url\(|@import", html)
    assert html.count('src="data:image/svg+xml;base64,') >= len(FIGS)
    from html import escape

    for name in ("gru", "mingru"):
        for eq in gruablate.get_variant(name).equations("text"):
            assert escape(eq) in html
    env = gruablate.load_results(sweep_dir)
    for cell in env[env["status"] != "ok"]["id"]:
        assert cell in html  # each failed cell named with its error
    assert '<tr class="bad">' in html
    assert "usable cores" in html and "numba" in html


def test_report_output_is_byte_stable(sweep_dir, report_dir):
    # A second report, from a fresh start of the figure code's caches, into another folder.
    from gruablate.report.figures import equation_svg

    equation_svg.cache_clear()
    a = report_dir
    b = gruablate.write_report(sweep_dir, out=sweep_dir / "b").parent
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_bench_run_shows_torch_peers_as_times_and_ratios(sweep_dir, bench_dir, tmp_path):
    out = gruablate.write_report([sweep_dir, bench_dir], out=tmp_path / "both")
    folder = out.parent
    for name in ("speed", "speed_ratio", "accuracy"):
        assert mpimg.imread(io.BytesIO((folder / f"{name}.png").read_bytes())).ndim == 3
    svg = (folder / "speed.svg").read_text()
    assert "torch" in svg and "gruablate" in svg  # the legend names both lines
    html = out.read_text()
    assert "Beside PyTorch" in html
    # torch time / gruablate time is (h/16) / (h/32) = 2 in every row of the fixture.
    rows = re.findall(r"<tr><td>(gru_reset_after|lstm)</td><td>(inference|train)</td>"
                      r"(?:<td>[^<]*</td>){8}<td>([^<]*)</td></tr>", html)
    assert len(rows) == 12 and {r[2] for r in rows} == {"2"}


def test_sweep_writes_its_report_and_says_where(tmp_path):
    res = CliRunner().invoke(main, [
        "run", "sweep", "--variants", "gru", "--tasks", "adding", "-o", "adding.seq_len=6",
        "--hidden", "8", "--steps", "10", "--batch", "4", "--seeds", "0", "--jobs", "1",
        "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert f"report: {tmp_path / 'run' / 'report' / 'report.html'}" in res.output
    assert (tmp_path / "run" / "report" / "accuracy.png").is_file()


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "not a gruablate run directory"),
])
def test_report_of_a_non_run_directory_is_a_one_line_error(tmp_path, make, words):
    (tmp_path / "x.txt").write_text("x")
    res = CliRunner().invoke(main, ["report", str(make(tmp_path))])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0]


def test_one_task_under_two_option_sets_is_never_averaged(tmp_path):
    """Two run directories with copy at two delays (and one differing setting):
    reported together, they are two tasks, in the tables and in the curves."""
    from gruablate.report.data import accuracy_table, load

    dirs = []
    for name, delay, lr in (("short", 2, "0.01"), ("long", 4, "0.02")):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'name = "{name}"\nvariants = ["rnn"]\nhidden = [4]\nseeds = [0]\n'
                       f"steps = 3\nbatch = 4\nlr = {lr}\n"
                       f"[tasks.copy]\ndelay = {delay}\nsymbols = 2\n")
        run_study(load_study(cfg), out=tmp_path / name, jobs=1)
        dirs.append(tmp_path / name)
    data = load(dirs)
    tasks = set(accuracy_table(data.train)["task"])
    assert tasks == {"copy (delay=2, lr=0.01)", "copy (delay=4, lr=0.02)"}
    assert set(data.curves["task"]) == tasks
    alone = load(dirs[:1])  # one option set: the plain task name
    assert set(alone.train["task"]) == {"copy"}
