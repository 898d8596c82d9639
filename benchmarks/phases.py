"""Forward and backward of one training step timed apart, gruablate beside PyTorch.

    NUMBA_NUM_THREADS=2 python benchmarks/phases.py [lstm|gru_reset_after] [H] [ROUNDS]

``gruablate run bench`` times a whole training step; this splits it, to see which phase
a gap to PyTorch comes from. float32, T = 100, B = 32, I = H, 2 threads on both sides;
each round takes the median of 7 calls per phase (after one untimed call), the two
libraries alternating; the medians over rounds are printed. The backward time is
(forward keeping activations + backward) − (forward keeping activations).
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
import torch
from _timing import median_ms  # benchmarks/ is sys.path[0] when run

import gruablate

PEERS = {"lstm": torch.nn.LSTM, "gru_reset_after": torch.nn.GRU}



def main(variant: str = "lstm", hidden: int = 512, rounds: int = 5) -> None:
    torch.set_num_threads(2)
    T, B, H = 100, 32, hidden
    layer = gruablate.RecurrentLayer(variant, H, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)
    peer = PEERS[variant](H, H)
    xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)

    def ours_step() -> None:
        layer.forward(x, keep=True)
        layer.backward(dy)

    def torch_step() -> None:
        peer(xt)[0].backward(dyt)

    rows: dict[str, list[float]] = {k: [] for k in ("ours fwd", "ours bwd", "torch fwd",
                                                     "torch bwd")}
    for _ in range(rounds):
        fwd = median_ms(lambda: layer.forward(x, keep=True))
        rows["ours fwd"].append(fwd)
        rows["ours bwd"].append(median_ms(ours_step) - fwd)
        fwd = median_ms(lambda: peer(xt))
        rows["torch fwd"].append(fwd)
        rows["torch bwd"].append(median_ms(torch_step) - fwd)
    print(f"{variant}, H = {H}, T = {T}, B = {B}, 2 threads; medians over {rounds} rounds (ms)")
    for name, vals in rows.items():
        print(f"  {name:9s} {statistics.median(vals):7.1f}   (rounds: "
              + ", ".join(f"{v:.1f}" for v in vals) + ")")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "lstm", int(args[1]) if len(args) > 1 else 512,
         int(args[2]) if len(args) > 2 else 5)
