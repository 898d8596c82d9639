"""Timing gruablate's kernels beside PyTorch: the engine of ``gruablate run bench``.

A benchmark is a grid (variants × hidden × batch × seq_len × input size × backend ×
dtype) measured in a few modes:

``inference``
    ``forward`` over the whole sequence, keeping no activations;
``train``
    a training step: ``forward`` keeping activations, then ``backward`` with every
    weight, input and initial-state gradient;
``stream``
    batch-1 style streaming: ``seq_len`` calls of one step each, the state carried
    from call to call; the record's ``step_us`` is the per-step latency.

Every measurement goes through the public APIs (``RecurrentLayer`` and ``torch.nn``),
so it is what a user gets. How a time is taken, and why:

- each callable runs ``warmup`` times first (compilation and caches excluded);
- then ``rounds`` rounds, each timing every callable of a shape in turn, ``repeats``
  timed calls after a rest (:data:`SETTLE_SECONDS`, while the other library's idle
  threads stop spinning) and one untimed call: gruablate and its PyTorch peer are
  measured interleaved, under the same machine load;
- a record holds the median and the spread (quartiles, min, max) of all timed calls,
  and the 1-minute load average seen while measuring, because on a shared machine a
  number means little without it.

``peers=("torch",)`` adds ``torch.nn.GRU`` (the counterpart of ``gru_reset_after``) and
``torch.nn.LSTM`` (of ``lstm``) for every shape, same dtype and thread count; their
records carry the counterpart's name in ``variant`` and ``impl="torch"``. A large
matrix product (gruablate's own, NumPy's, PyTorch's) measures the machine's peak, so
every GFLOP/s is also a fraction of it. Measurement returns plain dicts
(:func:`run_bench`); :func:`write_records` puts them in a run directory read by
:func:`gruablate.load_results`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import backend_names, get_backend
from .cells.catalogue import get_variant, list_variants
from .cells.plan import make_plan
from .cells.spec import SpecError, Variant
from .envinfo import cpu_model, usable_cores, vector_extensions
from .errors import BackendUnavailableError, BenchError
from .memory import check_fits, layer_bytes
from .vocabulary import DTYPES

MODES = ("inference", "train", "stream")
PEERS = ("torch",)
# The variants PyTorch has, and the torch.nn class computing each exactly.
TORCH_PEERS = {"gru_reset_after": "GRU", "lstm": "LSTM"}

PRESETS: dict[str, dict[str, Any]] = {
    # The speed issue's standard grid and PyTorch's fastrnns default size.
    "standard": dict(hidden=(32, 64, 128, 256, 512), batch=(32,), seq_len=(100,),
                     input_size=(None,), modes=("inference", "train")),
    "fastrnns": dict(hidden=(512,), batch=(64,), seq_len=(100,), input_size=(None,),
                     modes=("inference", "train")),
    # Batch-1 streaming latency (one call per step) and the whole-sequence forward.
    "stream": dict(hidden=(128,), batch=(1,), seq_len=(100,), input_size=(None,),
                   modes=("stream", "inference")),
}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``input_size`` ``None`` means ``I = H``."""

    variants: tuple[str, ...] = ("gru_reset_after", "lstm")
    hidden: tuple[int, ...] = (32, 64, 128, 256, 512)
    batch: tuple[int, ...] = (32,)
    seq_len: tuple[int, ...] = (100,)
    input_size: tuple[int | None, ...] = (None,)
    backends: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = ("inference", "train")
    peers: tuple[str, ...] = ()
    threads: int | None = None  # None: every usable core
    repeats: int = 5
    rounds: int = 3
    warmup: int = 2
    peak: bool = True
    peak_size: int = 2048
    seed: int = 0

    def validate(self) -> BenchConfig:
        """Check every option; return the config with ``threads`` resolved.

        Raises :class:`BenchError` with a one-line message naming the bad option.
        """
        if not self.variants:
            raise BenchError("--variants: give at least one variant")
        for name in self.variants:
            try:
                get_variant(name)
            except SpecError as exc:
                raise BenchError(f"--variants: {exc}") from None
        for opt, values in (("hidden", self.hidden), ("batch", self.batch),
                            ("seq-len", self.seq_len)):
            _check_sizes(opt, values)
        _check_sizes("input-size", [v for v in self.input_size if v is not None])
        if not self.input_size:
            raise BenchError("--input-size: give at least one size (or 'same')")
        for name in self.variants:  # a cell reading x element-wise needs I = H
            v = get_variant(name)
            for size, hidden in ((i, h) for i in self.input_size if i is not None
                                 for h in self.hidden):
                try:
                    v.check_sizes(size, hidden)
                except ValueError as exc:
                    raise BenchError(f"--input-size: {exc}") from None
        for opt, values, allowed in (("backends", self.backends, backend_names()),
                                     ("dtypes", self.dtypes, DTYPES),
                                     ("modes", self.modes, MODES),
                                     ("peers", self.peers, PEERS)):
            if opt != "peers" and not values:
                raise BenchError(f"--{opt}: give at least one of {', '.join(allowed)}")
            for v in values:
                if v not in allowed:
                    raise BenchError(
                        f"--{opt}: unknown value {v!r}; choose from {', '.join(allowed)}"
                    )
        for opt, value, low in (("repeats", self.repeats, 1), ("rounds", self.rounds, 1),
                                ("warmup", self.warmup, 1), ("peak-size", self.peak_size, 64)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BenchError(f"--{opt} must be an integer >= {low}, got {value!r}")
        threads = self.threads if self.threads is not None else default_threads()
        limit = _numba_max_threads()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise BenchError(f"--threads must be a positive integer, got {threads!r}")
        if threads > limit:
            raise BenchError(
                f"--threads {threads} exceeds Numba's pool of {limit} threads; set"
                f" NUMBA_NUM_THREADS={threads} in the environment before starting"
            )
        try:
            self._check_memory()
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        if "torch" in self.peers:
            _import_torch()
        for name in self.backends:
            try:
                get_backend(name).require()
            except BackendUnavailableError as exc:
                raise BenchError(f"--backends {name}: {exc}") from None
            for variant in self.variants:
                reason = get_backend(name).unsupported(get_variant(variant))
                if reason is not None:
                    raise BenchError(f"--backends {name}: {reason}")
        return BenchConfig(**{**asdict(self), "threads": threads})

    def _check_memory(self) -> None:
        """A ``ValueError`` when a case of the grid (or the peak product) cannot fit in
        memory; the peer, when timed, holds about as much again."""
        train = "train" in self.modes
        for name in self.variants:
            plan = make_plan(get_variant(name))
            for shape in self.shapes():
                need = layer_bytes(plan, seq_len=shape["seq_len"], batch=shape["batch"],
                                   input_size=shape["input_size"], hidden=shape["hidden"],
                                   dtype=shape["dtype"], train=train)
                check_fits(need * (2 if self.peers else 1),
                           f"{name} at hidden {shape['hidden']}, batch {shape['batch']},"
                           f" seq-len {shape['seq_len']}", "use smaller sizes")
        if self.peak:
            need = 3 * self.peak_size**2 * max(np.dtype(d).itemsize for d in self.dtypes)
            check_fits(need, f"--peak-size {self.peak_size}", "use a smaller --peak-size")

    def shapes(self) -> Iterator[dict[str, Any]]:
        """Every (backend, dtype, hidden, batch, seq_len, input_size) of the grid."""
        for backend, dtype, H, B, T, I in itertools.product(
            self.backends, self.dtypes, self.hidden, self.batch, self.seq_len, self.input_size
        ):
            yield dict(backend=backend, dtype=dtype, hidden=H, batch=B, seq_len=T,
                       input_size=H if I is None else I)


def _check_sizes(opt: str, values: Sequence[Any]) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BenchError(f"--{opt}: sizes must be positive integers, got {v!r}")


def default_threads() -> int:
    """Every core this process may use, capped at Numba's pool size."""
    return max(1, min(usable_cores(), _numba_max_threads()))


def _numba_max_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _import_torch() -> Any:
    try:
        import torch
    except ModuleNotFoundError:
        raise BenchError(
            "--peers torch needs PyTorch: pip install torch (the 'torch' extra)"
        ) from None
    return torch


# --------------------------------------------------------------------------- threads
@contextlib.contextmanager
def thread_count(threads: int, torch: Any | None = None) -> Iterator[None]:
    """Numba, PyTorch and (for the NumPy peak) BLAS all at ``threads``, restored after."""
    import numba

    old_numba = numba.get_num_threads()
    old_torch = torch.get_num_threads() if torch is not None else None
    numba.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    limiter: Any = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads, user_api="blas")
    try:
        with limiter:
            yield
    finally:
        numba.set_num_threads(old_numba)
        if torch is not None and old_torch is not None:
            torch.set_num_threads(old_torch)


# --------------------------------------------------------------------------- timing
@dataclass
class Case:
    """One thing to time: a callable and the record fields that describe it."""

    fields: dict[str, Any]
    fn: Callable[[], Any]
    sync: Callable[[], Any] = field(default=lambda: None)
    samples: list[float] = field(default_factory=list)


#: Seconds of rest before each case's calls in :func:`time_cases`. Idle threads of one
#: library spin before they sleep (GNU OpenMP 300 000 polls, PyTorch's own OpenMP copy
#: included; OpenBLAS about 2^28 cycles), and spinning on the second of two cores they
#: slowed the next case: gruablate's ``lstm`` at H = 32 timed right after ``nn.LSTM``
#: ran 2.2x slower than timed alone (1.3x at H = 64, none from H = 256; 2026-12-08, a
#: 2-core AMD EPYC). The rest outlasts every such spin.
SETTLE_SECONDS = 0.15


def time_cases(cases: Sequence[Case], *, warmup: int, rounds: int, repeats: int) -> float:
    """Fill every case's ``samples`` (seconds), interleaving the cases round by round.

    Returns the mean 1-minute load average seen while timing (NaN where unknown).
    """
    for case in cases:
        for _ in range(warmup):
            case.fn()
        case.sync()
    loads = []
    for r in range(rounds):
        # Rotate the order so no case always follows the same one.
        order = list(cases[r % len(cases):]) + list(cases[: r % len(cases)])
        for case in order:
            # The previous case's library may still have threads spinning on the cores
            # (OpenMP's idle wait, OpenBLAS's): let them go to sleep first.
            time.sleep(SETTLE_SECONDS)
            case.fn()  # untimed: caches and the thread pool warm for this case
            case.sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                case.fn()
                case.sync()
                case.samples.append(time.perf_counter() - t0)
        with contextlib.suppress(OSError, AttributeError):
            loads.append(os.getloadavg()[0])
    return float(np.mean(loads)) if loads else float("nan")


def summarise(samples: Sequence[float]) -> dict[str, float]:
    """Median and spread of timed samples (seconds in, milliseconds out)."""
    ms = np.asarray(samples, dtype=float) * 1e3
    q25, med, q75 = np.percentile(ms, [25, 50, 75])
    return dict(
        median_ms=float(med), p25_ms=float(q25), p75_ms=float(q75),
        min_ms=float(ms.min()), max_ms=float(ms.max()), n=int(ms.size),
        # Relative interquartile range: 0.05 means the middle half is within ±2.5%.
        spread=float((q75 - q25) / med) if med > 0 else float("nan"),
    )


# --------------------------------------------------------------------------- cases
def _ours(variant: Variant, shape: dict[str, Any], mode: str, seed: int) -> Case:
    from .layer import RecurrentLayer

    T, B, H, I = shape["seq_len"], shape["batch"], shape["hidden"], shape["input_size"]
    dtype, backend = shape["dtype"], shape["backend"]
    layer = RecurrentLayer(variant, I, H, seed=seed, dtype=dtype, backend=backend)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    fn, sync = get_backend(backend).timed_call(layer, x, dy, mode)
    return Case({}, fn, sync=sync)


def _torch_case(torch: Any, cls_name: str, shape: dict[str, Any], mode: str, seed: int) -> Case:
    T, B, H, I = shape["seq_len"], shape["batch"], shape["hidden"], shape["input_size"]
    device = get_backend(shape["backend"]).torch_device
    tdtype = getattr(torch, shape["dtype"])
    torch.manual_seed(seed)
    module = getattr(torch.nn, cls_name)(I, H).to(device=device, dtype=tdtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(T, B, I, generator=gen, dtype=tdtype).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    zeros = torch.zeros(1, B, H, dtype=tdtype, device=device)
    if mode == "inference":
        def fn() -> None:
            with torch.inference_mode():
                module(x)
    elif mode == "train":
        dy = torch.randn(T, B, H, generator=gen, dtype=tdtype).to(device)
        xg = x.clone().requires_grad_(True)

        def fn() -> None:
            # Same work as gruablate's step: weight, input and initial-state gradients.
            module.zero_grad(set_to_none=True)
            xg.grad = None
            h0 = zeros.clone().requires_grad_(True)
            state = (h0, zeros.clone().requires_grad_(True)) if cls_name == "LSTM" else h0
            y, _ = module(xg, state)
            y.backward(dy)
    else:
        def fn() -> None:
            with torch.inference_mode():
                state = None
                for t in range(T):
                    _, state = module(x[t : t + 1], state)
    return Case({}, fn, sync=sync)


# --------------------------------------------------------------------------- peak
def measure_peak(dtype: str, size: int, threads: int, repeats: int = 5,
                 torch: Any | None = None) -> list[dict[str, Any]]:
    """GFLOP/s of a ``size``-cubed matrix product: gruablate's own, NumPy's, PyTorch's.

    gruablate's is the product its CPU kernels run; the machine's peak is taken as the
    best of the three (the hardest yardstick for the kernels).
    """
    from .backends.cpu import runtime as cpu_runtime

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    c = np.empty((size, size), dtype=dtype)
    n = size

    def ours() -> None:
        cpu_runtime.gemm(a.reshape(-1), 0, n, 1, n, n, b.reshape(-1), 0, n, 1, n,
                         c.reshape(-1), 0, n, 0)

    cases = [Case({"impl": "gruablate"}, ours), Case({"impl": "numpy"}, lambda: np.dot(a, b, c))]
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        cases.append(Case({"impl": "torch"}, lambda: torch.mm(ta, tb)))
    load = time_cases(cases, warmup=1, rounds=1, repeats=repeats)
    flops = 2.0 * size**3
    out = []
    for case in cases:
        s = summarise(case.samples)
        out.append(dict(
            kind="peak", impl=case.fields["impl"], dtype=dtype, size=size, threads=threads,
            median_ms=s["median_ms"], spread=s["spread"], n=s["n"],
            gflops=flops / (s["median_ms"] * 1e-3) / 1e9, loadavg=load,
        ))
    return out


# --------------------------------------------------------------------------- run
ProgressFn = Callable[[str], None]


def run_bench(config: BenchConfig, progress: ProgressFn | None = None,
              on_records: Callable[[list[dict[str, Any]]], None] | None = None
              ) -> list[dict[str, Any]]:
    """Measure the grid; one record (a plain dict) per measurement.

    Records of kind ``"bench"`` carry the columns of :data:`gruablate.store.BENCH_COLUMNS`
    plus the spread, ``seq_per_s``, ``step_us``, ``peak_gflops``, ``peak_fraction``,
    ``flops``, ``loadavg`` and, for gruablate rows with a PyTorch peer,
    ``torch_ratio`` (PyTorch time / gruablate time: above 1, gruablate is faster).
    Records of kind ``"peak"`` hold the matrix-product measurements. ``on_records`` is
    called with each shape's records as soon as they are measured (to write them).
    """
    config = config.validate()
    say = progress or (lambda msg: None)
    torch = _import_torch() if "torch" in config.peers or _torch_installed() else None
    threads = int(config.threads or 1)
    records: list[dict[str, Any]] = []
    with thread_count(threads, torch):
        peaks: dict[str, float] = {}
        if config.peak:
            for dtype in config.dtypes:
                say(f"peak: {dtype} {config.peak_size}^3 matrix product, {threads} threads")
                recs = measure_peak(dtype, config.peak_size, threads, torch=torch)
                peaks[dtype] = max(r["gflops"] for r in recs)
                records += recs
                if on_records:
                    on_records(recs)
        variants = [get_variant(v) for v in config.variants]
        for shape in config.shapes():
            cases = []
            for variant in variants:
                for mode in config.modes:
                    case = _ours(variant, shape, mode, config.seed)
                    case.fields = dict(variant=variant.name, impl="gruablate", mode=mode)
                    cases.append(case)
            # A peer runs on the device of our backend; a backend with none has no peer.
            if "torch" in config.peers and get_backend(shape["backend"]).torch_device:
                for name, cls_name in TORCH_PEERS.items():
                    for mode in config.modes:
                        case = _torch_case(torch, cls_name, shape, mode, config.seed)
                        case.fields = dict(variant=name, impl="torch", mode=mode)
                        cases.append(case)
            say("measuring " + ", ".join(f"{k}={v}" for k, v in shape.items())
                + f": {len(cases)} cases")
            load = time_cases(cases, warmup=config.warmup, rounds=config.rounds,
                              repeats=config.repeats)
            recs = [_record(case, shape, threads, load, peaks.get(shape["dtype"]))
                    for case in cases]
            _add_ratios(recs)
            records += recs
            if on_records:
                on_records(recs)
    return records


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@functools.cache
def _machine() -> dict[str, str]:
    """The CPU each record names (read once: it does not change within a process)."""
    return {"cpu": cpu_model(), "vector_extensions": " ".join(vector_extensions())}


def _record(case: Case, shape: dict[str, Any], threads: int, load: float,
            peak: float | None) -> dict[str, Any]:
    f = case.fields
    variant = get_variant(f["variant"])
    s = summarise(case.samples)
    T, B = shape["seq_len"], shape["batch"]
    flop_mode = "train" if f["mode"] == "train" else "inference"
    flops = variant.flops(shape["input_size"], shape["hidden"], B, T, flop_mode)
    gflops = flops / (s["median_ms"] * 1e-3) / 1e9
    built = get_backend(shape["backend"]).describe() if f["impl"] == "gruablate" else {}
    return dict(
        kind="bench", **f, **shape, **built, threads=threads, **s,
        **_machine(),  # every figure names its CPU: it holds on that CPU only
        seq_per_s=B / (s["median_ms"] * 1e-3),
        step_us=s["median_ms"] * 1e3 / T,
        flops=flops, gflops=gflops,
        peak_gflops=peak, peak_fraction=gflops / peak if peak else None,
        loadavg=load,
    )


_RATIO_KEYS = ("variant", "mode", "backend", "dtype", "hidden", "batch", "seq_len",
               "input_size", "threads")


def _add_ratios(recs: list[dict[str, Any]]) -> None:
    torch_ms = {tuple(r[k] for k in _RATIO_KEYS): r["median_ms"]
                for r in recs if r["impl"] == "torch"}
    for r in recs:
        if r["impl"] == "gruablate":
            peer = torch_ms.get(tuple(r[k] for k in _RATIO_KEYS))
            r["torch_ratio"] = peer / r["median_ms"] if peer else None


# --------------------------------------------------------------------------- output
def record_id(rec: dict[str, Any]) -> str:
    """A file-safe cell id naming the measurement."""
    if rec.get("kind") == "peak":
        parts = ["peak", rec["impl"], rec["dtype"], f"N{rec['size']}", f"th{rec['threads']}"]
    else:
        parts = [rec["impl"], rec["variant"], rec["backend"], rec["dtype"], rec["mode"],
                 f"H{rec['hidden']}", f"B{rec['batch']}", f"T{rec['seq_len']}",
                 f"I{rec['input_size']}", f"th{rec['threads']}"]
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", "-".join(str(p) for p in parts))[:200]


def write_records(run_dir: str | Path, records: list[dict[str, Any]],
                  study: dict[str, Any] | None = None) -> Path:
    """Write records into a run directory (created if needed); returns its path."""
    from .store import open_run

    run = open_run(run_dir, study=study or {"kind": "bench"})
    for rec in records:
        run.write_record(record_id(rec), rec)
    return run.path


def study_of(config: BenchConfig) -> dict[str, Any]:
    """The ``study.json`` of a benchmark run: the config, as asked."""
    return {"kind": "bench", **{k: list(v) if isinstance(v, tuple) else v
                                for k, v in asdict(config).items()}}


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of the records: one line per measurement."""
    peaks = [r for r in records if r.get("kind") == "peak"]
    rows = [r for r in records if r.get("kind") == "bench"]
    lines = []
    if peaks:
        lines.append("matrix-product peak: " + ", ".join(
            f"{r['impl']} {r['dtype']} {r['gflops']:.1f} GFLOP/s" for r in peaks))
    head = ("variant", "impl", "mode", "dtype", "thr", "H", "B", "T", "I", "median ms",
            "IQR %", "seq/s", "step us", "GFLOP/s", "% peak", "torch/ours")
    table = [head]
    for r in sorted(rows, key=lambda r: (r["backend"], r["dtype"], r["batch"], r["seq_len"],
                                          r["hidden"], r["input_size"], r["mode"],
                                          r["variant"], r["impl"])):
        table.append((
            r["variant"], r["impl"], r["mode"], r["dtype"], str(r["threads"]),
            str(r["hidden"]), str(r["batch"]), str(r["seq_len"]), str(r["input_size"]),
            f"{r['median_ms']:.3f}", f"{100 * r['spread']:.0f}", f"{r['seq_per_s']:.4g}",
            f"{r['step_us']:.1f}", f"{r['gflops']:.2f}",
            "-" if r.get("peak_fraction") is None else f"{100 * r['peak_fraction']:.0f}",
            "-" if r.get("torch_ratio") is None else f"{r['torch_ratio']:.2f}",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        lines.append("  ".join(
            c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                 strict=True))
        ))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    tiles = sorted({r["cpu_tile"] for r in rows if isinstance(r.get("cpu_tile"), str)})
    if tiles:
        lines.append(f"gruablate's CPU products used the {', '.join(tiles)} register tile")
    loads = [r["loadavg"] for r in rows if r.get("loadavg") == r.get("loadavg")]
    if loads:
        lines.append(f"load average while measuring: {min(loads):.2f} to {max(loads):.2f}"
                     f" on {os.cpu_count()} logical cores")
    return "\n".join(lines)


def all_variants() -> tuple[str, ...]:
    """The catalogue, for ``--variants all``."""
    return tuple(list_variants())
