"""Where the time of a CUDA step goes, on one GPU: what to work on next.

Run on a machine with an NVIDIA GPU (``benchmarks/gpu.sh`` does not run it)::

    python benchmarks/gpu_phases.py [--out FILE]

Three measurements, each a median over repeats after warm-up, device synchronised:

1. **Grid sync.** A kernel doing nothing but ``n`` grid-wide syncs
   (``cuda.cg.this_grid().sync()``, which numba-cuda implements with
   ``cudaCGSynchronize``), per sync, for grids of 8-132 blocks of 512 threads: the
   floor of every step of the persistent kernels.
2. **Phases of a training step** at PyTorch's ``fastrnns`` size (T = 100, B = 64,
   I = H = 512, float32) for ``gru_reset_after`` and ``lstm``, and of small-batch
   inference: every launch timed alone (a sync before and after it), grouped by kernel
   and product shape.
3. **Geometry.** Inference and the training step under each geometry of
   ``CANDIDATES`` beside the current one (``DEFAULT_GEOMETRY``), in one process, on
   the same inputs, timed in interleaved rounds: the reduction steps a per-step
   product loads at once (``Geometry.ku``; 1 is the kernels before it existed) and the
   hidden units each lane of a per-step product computes (``Geometry.jc``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from numba import cuda  # this script needs numba-cuda: it measures a GPU

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gruablate  # noqa: E402
from gruablate.backends.cuda import device as cuda_device  # noqa: E402
from gruablate.backends.cuda import kernels as kc  # noqa: E402
from gruablate.backends.cuda.source import DEFAULT_GEOMETRY  # noqa: E402

#: Geometries timed beside DEFAULT_GEOMETRY, by the name their column gets.
CANDIDATES = {
    "ku=1": replace(DEFAULT_GEOMETRY, ku=1),
    "8 rows, 1 col/lane": replace(DEFAULT_GEOMETRY, bm=8, jc=1),
    "8 rows, 1 col/lane, ku=1": replace(DEFAULT_GEOMETRY, bm=8, jc=1, ku=1),
}
#: The geometry table's rows (variant, B, H), and its interleaved rounds (each the
#: median of 5 calls).
GEOMETRY_ROWS = (
    ("gru_reset_after", 1, 256),
    ("gru_reset_after", 1, 1024),
    ("lstm", 4, 512),
    ("gru_reset_after", 8, 512),
    ("gru_reset_after", 32, 256),
    ("gru_reset_after", 64, 512),
    ("lstm", 64, 512),
)
ROUNDS = 5
#: --smoke (a check of this script in numba's simulator): every size divided by this,
#: grids of one block.
SHRINK = {"on": False}


def _size(n: int) -> int:
    return max(1, n // 64) if SHRINK["on"] else n


def _median_ms(fn, cuda, warmup: int = 3, repeats: int = 15) -> float:
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(out)


def _syncs(n, out):
    """n grid-wide syncs and nothing else (``cuda`` is this module's global: numba
    resolves it at compile time, and the simulator swaps in its own)."""
    g = cuda.cg.this_grid()
    for _ in range(n):
        g.sync()
    if cuda.grid(1) == 0:
        out[0] = n


def grid_sync_cost(cuda) -> list[str]:
    syncs = cuda.jit(_syncs)
    out = cuda.device_array(1, dtype=np.int64)
    lines = ["### Grid sync", "", "| blocks × 512 threads | µs per sync |", "| ---: | ---: |"]
    nt, n = (4, 2) if SHRINK["on"] else (512, 1000)
    for nb in (1,) if SHRINK["on"] else (8, 32, 64, 132):
        t0 = _median_ms(lambda nb=nb: syncs[nb, nt](0, out), cuda)
        t1 = _median_ms(lambda nb=nb: syncs[nb, nt](n, out), cuda)
        lines.append(f"| {nb} | {1e3 * (t1 - t0) / n:.2f} |")
    return lines


class _Phases:
    """Times every product and cell launch of a CudaImpl alone."""

    def __init__(self, impl, cuda) -> None:
        self.cuda, self.times, self.n = cuda, defaultdict(list), 1
        mm, cell = impl._matmul, impl._launch_cell

        def timed(label, fn):
            def run(*args):
                cuda.synchronize()
                t0 = time.perf_counter()
                fn(*args)
                cuda.synchronize()
                self.times[label(args)].append(1e3 * (time.perf_counter() - t0))

            return run

        impl._matmul = timed(lambda a: f"matmul {a[0]}x{a[1]}x{a[2]}", mm)
        impl._launch_cell = timed(lambda a: f"{a[0]} (persistent)", cell)

    def table(self, total_ms: float, title: str) -> list[str]:
        lines = [f"#### {title}: {total_ms:.2f} ms a call", "",
                 "| launch | ms (median) | calls per step |", "| --- | ---: | ---: |"]
        for label, ts in sorted(self.times.items(), key=lambda kv: -statistics.median(kv[1])):
            lines.append(f"| {label} | {statistics.median(ts):.3f} | {len(ts) // self.n} |")
        return lines + [""]

    def measure(self, fn, n: int = 10) -> None:
        fn()
        self.cuda.synchronize()
        self.times.clear()
        self.n = n
        for _ in range(n):
            fn()


def _layer(variant, T, B, H, cuda, geo=None):
    T, B, H = _size(T), _size(B), _size(H)
    layer = gruablate.RecurrentLayer(variant, H, H, seed=0, backend="cuda")
    impl = layer.impl
    if geo is not None:
        impl.geo, impl.m = geo, kc.common_kernels(layer.dtype, geo)
    S = len(layer.variant.state_names)
    rng = np.random.default_rng(0)
    xd = cuda.to_device(rng.standard_normal(T * B * H).astype("float32"))
    s0 = cuda.to_device(np.zeros(S * B * H, dtype="float32"))
    dy = cuda.to_device(rng.standard_normal(T * B * H).astype("float32"))
    ds = cuda.to_device(np.zeros(S * B * H, dtype="float32"))

    def infer():
        impl.forward_device(xd, s0, T, B, False)

    def train_step():
        saved = impl.forward_device(xd, s0, T, B, True)
        impl.backward_device(saved, dy, ds, T, B)

    return impl, infer, train_step


def phases(cuda) -> list[str]:
    lines = ["### Phases", ""]
    for variant, T, B, H, mode in (
        ("gru_reset_after", 100, 64, 512, "train"),
        ("lstm", 100, 64, 512, "train"),
        ("gru_reset_after", 100, 1, 1024, "inference"),
        ("lstm", 100, 8, 512, "inference"),
    ):
        impl, infer, train = _layer(variant, T, B, H, cuda)
        fn = train if mode == "train" else infer
        total = _median_ms(fn, cuda)
        p = _Phases(impl, cuda)
        p.measure(fn)
        lines += p.table(total, f"`{variant}` {mode}, T = {T}, B = {B}, H = I = {H}")
    return lines


def geometries(cuda) -> list[str]:
    d = DEFAULT_GEOMETRY
    names = list(CANDIDATES)
    lines = [f"### Geometry: current ({d.bm}-row tiles, {d.jc} column(s) per lane, ku={d.ku})"
             " against others", "",
             "ms per call (median); the last columns are each other geometry's time over the"
             " current one's (above 1: the current one is faster).", "",
             "| variant | mode | B | H | current ms | " + " | ".join(f"{n} ms" for n in names)
             + " | " + " | ".join(f"{n} / current" for n in names) + " |",
             "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in names * 2) + " |"]
    for variant, B, H in GEOMETRY_ROWS[: 1 if SHRINK["on"] else None]:
        for mode in ("inference", "train"):
            if B < 8 and mode == "train":
                continue
            # Every geometry compiled and warmed first, then timed in interleaved
            # rounds: timed one after another, the first of a row ran up to a quarter
            # slower than an identical kernel timed after it (the cause was not found).
            fns = {}
            for name, geo in [("current", d), *CANDIDATES.items()]:
                _, infer, train = _layer(variant, 100, B, H, cuda, geo)
                fns[name] = infer if mode == "inference" else train
                _median_ms(fns[name], cuda, warmup=3, repeats=1)
            runs = {name: [] for name in fns}
            for _ in range(1 if SHRINK["on"] else ROUNDS):
                for name, fn in fns.items():
                    runs[name].append(_median_ms(fn, cuda, warmup=1, repeats=5))
            t = {name: statistics.median(v) for name, v in runs.items()}
            ms = [f"{t[n]:.3f}" for n in names]
            ratio = [f"{t[n] / t['current']:.2f}" for n in names]
            lines.append(f"| `{variant}` | {mode} | {B} | {H} | {t['current']:.3f} | "
                         + " | ".join(ms) + " | " + " | ".join(ratio) + " |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_phases.md")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (for the simulator)")
    args = ap.parse_args(argv)
    SHRINK["on"] = args.smoke
    cuda = cuda_device.require_cuda()
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "the simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    lines = [f"## Where the time goes: {name}", ""]
    for part in (grid_sync_cost, geometries, phases):
        got = part(cuda) + [""]
        print("\n".join(got), flush=True)
        lines += got
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
