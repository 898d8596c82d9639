"""Time gruablate's CUDA kernels against cuDNN (``torch.nn.GRU`` / ``nn.LSTM``) on one GPU.

Run by ``benchmarks/gpu.sh`` after the GPU test suite has passed; it can also be run
alone::

    python benchmarks/gpu_bench.py --out benchmarks/gpu_results.md [--quick] [--no-tf32]

By default cuDNN runs as PyTorch runs it, free to do its products in TF32 on the tensor
cores; ``--no-tf32`` holds it to float32 arithmetic, as gruablate's kernels are.

Both sides are timed the same way: inputs already on the device, a few warm-up calls
(which also compile gruablate's kernels), then ``--repeats`` calls each closed by a
device synchronisation, timed on the host clock; the table reports the median.

- *forward* is inference: gruablate's ``forward_device(keep=False)``, torch under
  ``no_grad``;
- *train step* is forward keeping activations plus backward through time with the
  input gradient and all weight gradients (torch: ``backward`` on ``y`` with an
  input that requires grad).

Grids (float32, as the speed issue specifies): the standard grid (T = 100, B = 32,
I = H, H ∈ {32, 64, 128, 256, 512}), PyTorch's ``fastrnns`` default size (T = 100,
B = 64, I = H = 512) and small-batch inference (T = 100, B ∈ {1, 2, 4, 8},
H ∈ {256, 512, 1024}, I = H). ``gru_reset_after`` and ``lstm`` are the exact
counterparts of ``nn.GRU`` and ``nn.LSTM`` (the table also reports the largest output
difference against torch on the same weights); ``gru`` (reset before the product) and
``mingru`` (a scan) are timed beside ``nn.GRU`` as the nearest peer.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gruablate  # noqa: E402
from gruablate.backends.cuda.device import require_cuda  # noqa: E402

PEER = {"gru_reset_after": "GRU", "lstm": "LSTM", "gru": "GRU", "mingru": "GRU"}
EXACT_ORDER = ("gru_reset_after", "lstm")
EXACT = set(EXACT_ORDER)  # same function as the peer, weights mapped


def _median_ms(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, repeats: int):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


class Ours:
    """One gruablate CUDA layer with device-resident inputs."""

    def __init__(self, variant: str, T: int, B: int, H: int, I: int) -> None:
        self.cuda = require_cuda()
        self.layer = gruablate.RecurrentLayer(variant, I, H, seed=0, backend="cuda")
        self.impl = self.layer.impl
        rng = np.random.default_rng(0)
        S = len(self.layer.variant.state_names)
        self.T, self.B = T, B
        self.x = rng.standard_normal((T, B, I)).astype("float32")
        self.xd = self.cuda.to_device(self.x.reshape(-1))
        self.s0d = self.cuda.to_device(np.zeros(S * B * H, dtype="float32"))
        self.dyd = self.cuda.to_device(rng.standard_normal(T * B * H).astype("float32"))
        self.dsd = self.cuda.to_device(np.zeros(S * B * H, dtype="float32"))

    def sync(self) -> None:
        self.cuda.synchronize()

    def forward(self) -> None:
        self.impl.forward_device(self.xd, self.s0d, self.T, self.B, False)

    def train_step(self) -> None:
        saved = self.impl.forward_device(self.xd, self.s0d, self.T, self.B, True)
        self.impl.backward_device(saved, self.dyd, self.dsd, self.T, self.B)

    def output(self) -> np.ndarray:
        return self.layer.forward(self.x, keep=False)[0]


class Torch:
    """The cuDNN peer, with the same weights when the variant maps onto it."""

    def __init__(self, torch: Any, ours: Ours, peer: str) -> None:
        from gruablate.interop import to_torch

        self.torch = torch
        T, B, I = ours.x.shape
        H = ours.layer.hidden_size
        if ours.layer.variant.name in EXACT:
            self.mod = to_torch(ours.layer).cuda()
        else:
            cls = torch.nn.GRU if peer == "GRU" else torch.nn.LSTM
            self.mod = cls(I, H).cuda()
        self.x = torch.from_numpy(ours.x).cuda()
        self.xg = self.x.clone().requires_grad_(True)
        self.dy = torch.randn(T, B, H, device="cuda")

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def forward(self) -> None:
        with self.torch.no_grad():
            self.mod(self.x)

    def train_step(self) -> None:
        self.mod.zero_grad(set_to_none=False)
        y, _ = self.mod(self.xg)
        y.backward(self.dy)

    def output(self) -> np.ndarray:
        with self.torch.no_grad():
            return self.mod(self.x)[0].cpu().numpy()


def _torch_cuda(tf32: bool = True) -> Any | None:
    """torch with cuDNN, or None. ``tf32``: let cuDNN do the products in TF32 on the
    tensor cores (PyTorch's default for cuDNN); False holds it to float32 arithmetic,
    as gruablate's kernels are."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return torch


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def run(
    grids: list[tuple[str, list[tuple[str, int, int, int, int]], tuple[str, ...]]],
    warmup: int,
    repeats: int,
    tf32: bool = True,
) -> list[str]:
    """Measure every (variant, T, B, H, I) of every grid; the Markdown lines of the tables."""
    torch = _torch_cuda(tf32)
    lines: list[str] = []
    for title, cases, modes in grids:
        lines += ["", f"### {title}", ""]
        head = "| variant | T | B | H | I |"
        rule = "| --- | ---: | ---: | ---: | ---: |"
        for m in modes:
            head += f" ours {m} (ms) | cuDNN {m} (ms) | ours / cuDNN |"
            rule += " ---: | ---: | ---: |"
        head += " max abs diff vs torch |"
        rule += " ---: |"
        lines += [head, rule]
        for variant, T, B, H, I in cases:
            ours = Ours(variant, T, B, H, I)
            peer = Torch(torch, ours, PEER[variant]) if torch is not None else None
            row = f"| `{variant}` | {T} | {B} | {H} | {I} |"
            for m in modes:
                t_ours = _median_ms(getattr(ours, m), ours.sync, warmup, repeats)
                t_peer = _median_ms(getattr(peer, m), peer.sync, warmup, repeats) if peer else None
                ratio = t_ours / t_peer if t_peer else None
                row += f" {_fmt(t_ours)} | {_fmt(t_peer)} | {_fmt(ratio)} |"
            diff = None
            if peer is not None and variant in EXACT:
                diff = float(np.max(np.abs(ours.output() - peer.output())))
            row += f" {_fmt(diff, 2) if diff is not None else '—'} |"
            lines.append(row)
            print(row, flush=True)
    return lines


def grids(quick: bool) -> list:
    """The benchmark grids; ``quick`` keeps one case of each, for a smoke run."""
    std_h = [32, 64, 128, 256, 512]
    small_h = [256, 512, 1024]
    small_b = [1, 2, 4, 8]
    if quick:
        std_h, small_h, small_b = [64], [256], [1]
    std_vars = ["gru_reset_after", "lstm", "gru", "mingru"]
    return [
        (
            "Standard grid (float32, T = 100, B = 32, I = H)",
            [(v, 100, 32, h, h) for h in std_h for v in std_vars],
            ("forward", "train_step"),
        ),
        (
            "fastrnns size (float32, T = 100, B = 64, I = H = 512)",
            [(v, 100, 64, 512, 512) for v in std_vars],
            ("forward", "train_step"),
        ),
        (
            "Small-batch inference (float32, T = 100, I = H)",
            [(v, 100, b, h, h) for h in small_h for b in small_b for v in EXACT_ORDER],
            ("forward",),
        ),
    ]


def _header(torch: Any | None) -> list[str]:
    cuda = require_cuda()
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    cc = ".".join(map(str, dev.compute_capability))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import numba

    try:
        import numba_cuda

        nc = numba_cuda.__version__
    except ImportError:  # pragma: no cover - the cuda check above needs it
        nc = "?"
    tv = "not available (peer columns are n/a)"
    if torch is not None:
        math = ("TF32 allowed (PyTorch's default)" if torch.backends.cudnn.allow_tf32
                else "TF32 off: float32 arithmetic, as gruablate's kernels")
        tv = f"{torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {math}"
    return [
        f"## GPU benchmark: {name} (compute capability {cc})",
        "",
        f"Measured {when} by `benchmarks/gpu.sh`. Python {platform.python_version()},"
        f" numba {numba.__version__}, numba-cuda {nc}, torch {tv}.",
        "Median wall time of one call after warm-up, device synchronised; inputs on the"
        " device for both sides.",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_results.md")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one case per grid (smoke run)")
    ap.add_argument("--no-tf32", dest="tf32", action="store_false",
                    help="hold cuDNN to float32 arithmetic (PyTorch lets it use TF32)")
    args = ap.parse_args(argv)
    lines = _header(_torch_cuda(args.tf32))
    lines += run(grids(args.quick), args.warmup, args.repeats, args.tf32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
