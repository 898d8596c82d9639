"""Do the CPU kernels give the same bits as before a change? Save, change, compare.

    python benchmarks/check_bits.py save before.npz     # on the old code
    python benchmarks/check_bits.py compare before.npz  # on the new code

Runs every built-in variant in float32 and float64 through the public API only
(``RecurrentLayer`` forward with and without kept activations, backward, and a few
training steps of a two-layer ``Model`` with Adam), at an odd small shape and at one
large enough to pack the weights and split the batch over threads, and stores every
output array. ``compare`` reports each array that differs in any bit.
"""

from __future__ import annotations

import sys

import numpy as np

import gruablate
from gruablate.model import Model
from gruablate.optim import Adam

SHAPES = ((7, 5, 3, 19), (12, 40, 24, 64))  # (T, B, I, H)


def outputs() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in gruablate.list_variants():
        for dtype in ("float32", "float64"):
            for T, B, I, H in SHAPES:
                key = f"{name}/{dtype}/{T}x{B}x{I}x{H}"
                rng = np.random.default_rng(7)
                layer = gruablate.RecurrentLayer(name, I, H, seed=3, dtype=dtype)
                x = rng.standard_normal((T, B, I)).astype(dtype)
                y_inf, _ = layer.forward(x, keep=False)
                y, last = layer.forward(x)
                dy = rng.standard_normal(y.shape).astype(dtype)
                dx, ds0, grads = layer.backward(dy)
                out[f"{key}/y_infer"] = y_inf
                out[f"{key}/y"] = y
                for k, s in enumerate(last if isinstance(last, tuple) else (last,)):
                    out[f"{key}/last{k}"] = s
                    out[f"{key}/ds0_{k}"] = (ds0 if isinstance(ds0, tuple) else (ds0,))[k]
                out[f"{key}/dx"] = dx
                out[f"{key}/flat_grads"] = layer.flat_grads.copy()
            model = Model(name, input_size=6, hidden=16, output_size=4, layers=2,
                          tokens=True, seed=1, dtype=dtype)
            opt = Adam(model.buffers, 1e-2)
            rng = np.random.default_rng(11)
            losses = []
            for _ in range(3):
                xt = rng.integers(0, 6, (9, 4))
                yt = rng.integers(0, 4, (9, 4))
                loss, _ = model.forward(xt, yt)
                model.backward()
                opt.step()
                model.params_changed()
                losses.append(loss)
            out[f"{name}/{dtype}/model_losses"] = np.array(losses)
            for k, (p, _) in enumerate(model.buffers):
                out[f"{name}/{dtype}/model_params{k}"] = p.copy()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        print(__doc__)
        return 2
    got = outputs()
    if argv[0] == "save":
        np.savez(argv[1], **got)
        print(f"saved {len(got)} arrays to {argv[1]}")
        return 0
    ref = np.load(argv[1])
    differ = [k for k in ref.files if k not in got or got[k].tobytes() != ref[k].tobytes()]
    missing = sorted(set(got) - set(ref.files))
    for k in differ:
        print(f"DIFFERS: {k}")
    print(f"{len(ref.files) - len(differ)} of {len(ref.files)} arrays bit-identical"
          f" ({len(gruablate.list_variants())} variants x 2 dtypes);"
          f" {len(missing)} new arrays not compared")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
