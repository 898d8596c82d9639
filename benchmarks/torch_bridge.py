"""The PyTorch bridge's cost: ``gruablate.torch.Recurrent`` beside the layer it wraps.

    python benchmarks/torch_bridge.py [--variants gru_reset_after,lstm,mgu] [--hidden 64,256]

A training step (forward over T = 100, B = 32, I = H, float32, then backward through
time with every gradient) through the ``nn.Module`` and autograd, and the same step
through ``RecurrentLayer.forward``/``backward`` directly, interleaved in one process on
Numba's threads; medians of 15, ratio bridge / direct.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from _timing import median_ms  # benchmarks/ is sys.path[0] when run

import gruablate
from gruablate.torch import Recurrent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="gru_reset_after,lstm,mgu")
    ap.add_argument("--hidden", default="64,256")
    args = ap.parse_args()
    print("| variant | H | direct ms | bridge ms | bridge / direct |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in args.variants.split(","):
        for H in (int(h) for h in args.hidden.split(",")):
            module = Recurrent(name, H, H, seed=0)
            layer = gruablate.RecurrentLayer(name, H, H, seed=0)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((100, 32, H)).astype(np.float32)
            dy = rng.standard_normal((100, 32, H)).astype(np.float32)
            xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

            def bridge(module=module, xt=xt, dyt=dyt):
                y, _ = module(xt)
                y.backward(dyt)

            def direct(layer=layer, x=x, dy=dy):
                layer.forward(x, copy=False)
                layer.backward(dy)

            d, b = [], []
            for _ in range(3):  # interleaved rounds: both see the same machine load
                d.append(median_ms(direct, 5))
                b.append(median_ms(bridge, 5))
            dm, bm = statistics.median(d), statistics.median(b)
            print(f"| `{name}` | {H} | {dm:.2f} | {bm:.2f} | {bm / dm:.3f} |")


if __name__ == "__main__":
    main()
