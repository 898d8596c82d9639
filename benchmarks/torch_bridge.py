"""The PyTorch bridge's cost: ``gruablate.torch.Recurrent`` beside the layer it wraps and
beside the same cell written in TorchScript.

    python benchmarks/torch_bridge.py [--variants all | gru_reset_after,lstm,mgu]
                                      [--hidden 32,64,128,256,512] [--threads 2]

A training step (forward over T = 100, B = 32, I = H, float32, then backward through
time with every gradient) three ways, interleaved in rounds in one process so all see
the same machine load: through the ``nn.Module`` and autograd (*bridge*), through
``RecurrentLayer.forward``/``backward`` directly (*direct*), and through the cell's
TorchScript step in a scripted loop with autograd's backward (*TorchScript*, printed
from the cell's equations by ``benchmarks/torchscript_cells.py``, the peer a PyTorch
user writes by hand). Before timing, each case checks that the TorchScript cell gives
the bridge's outputs (in float64, :func:`check_same_cell`). Medians over rounds of the
median of five calls, each block after a rest (``run bench``'s ``SETTLE_SECONDS``); the
ratios are bridge / direct and TorchScript / bridge.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _timing import median_ms  # benchmarks/ is sys.path[0] when run
from torchscript_cells import script_cell

import gruablate
from gruablate.bench import SETTLE_SECONDS
from gruablate.envinfo import cpu_model, vector_extensions
from gruablate.torch import Recurrent


def check_same_cell(name: str, H: int, cu, pnames: list[str], states: list[str]) -> None:
    """The TorchScript cell gives the bridge's outputs: compared in float64 (ten steps,
    four rows), where only the order of sums differs. In float32 over 100 steps a
    layer-normalised cell's division by a row's spread magnifies rounding past any
    tolerance that would still catch a wrong cell."""
    module = Recurrent(name, H, H, seed=0, dtype=torch.float64)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((10, 4, H)))
    weights = [getattr(module.cells[0], p) for p in pnames]
    s0 = [torch.zeros(4, H, dtype=torch.float64) for _ in states]
    with torch.no_grad():
        want = module(x)[0]
        got = cu.run(x, *s0, *weights)[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="gru_reset_after,lstm,mgu")
    ap.add_argument("--hidden", default="64,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import numba

    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    names = (gruablate.list_variants() if args.variants == "all"
             else args.variants.split(","))
    print(f"# CPU: {cpu_model()} ({', '.join(vector_extensions())}), {args.threads} threads,"
          f" float32, T=100, B=32, I=H, training step (forward + backward)")
    print("| variant | H | direct ms | bridge ms | bridge / direct | TorchScript ms |"
          " TorchScript / bridge |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        for H in (int(h) for h in args.hidden.split(",")):
            module = Recurrent(name, H, H, seed=0)
            layer = gruablate.RecurrentLayer(name, H, H, seed=0)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((100, 32, H)).astype(np.float32)
            dy = rng.standard_normal((100, 32, H)).astype(np.float32)
            xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
            cu, pnames, states = script_cell(layer.variant)
            weights = [getattr(module.cells[0], p) for p in pnames]
            s0 = [torch.zeros(32, H) for _ in states]
            check_same_cell(name, H, cu, pnames, states)

            def bridge(module=module, xt=xt, dyt=dyt):
                y, _ = module(xt)
                y.backward(dyt)

            def direct(layer=layer, x=x, dy=dy):
                layer.forward(x, copy=False)
                layer.backward(dy)

            def script(cu=cu, xt=xt, s0=s0, weights=weights, dyt=dyt):
                cu.run(xt, *s0, *weights)[0].backward(dyt)

            times: dict[str, list[float]] = {"d": [], "b": [], "s": []}
            for _ in range(args.rounds):  # interleaved: the same machine load for all
                for key, fn in (("d", direct), ("b", bridge), ("s", script)):
                    # after a rest: the previous way's idle threads (PyTorch's OpenMP
                    # copy, Numba's) stop spinning on the cores first
                    time.sleep(SETTLE_SECONDS)
                    times[key].append(median_ms(fn, 5))
            d, b, s = (statistics.median(times[k]) for k in "dbs")
            print(f"| `{name}` | {H} | {d:.2f} | {b:.2f} | {b / d:.3f} | {s:.2f} |"
                  f" {s / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
