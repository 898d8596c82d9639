"""A threaded call beside a busy neighbour: is it ever much slower than on one thread?

    python benchmarks/contention.py [--variants mingru,gru_reset_after,lstm] [--hidden 64,256]

For each variant and size it times a forward pass over a sequence (T = 100, B = 32,
I = H, float32) and a training step, on 1 and on all of Numba's threads, first on a
quiet machine and then with one busy neighbour process per core (a pure spin loop at
normal priority: another user's job). Medians of several calls; prints a Markdown
table, and names Numba's threading layer and the environment that shapes how its idle
threads wait.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numba
import numpy as np
from _timing import median_ms  # benchmarks/ is sys.path[0] when run


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1



def _cases(variants, sizes):
    import gruablate

    for name in variants:
        for H in sizes:
            layer = gruablate.RecurrentLayer(name, H, H, seed=0)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((100, 32, H)).astype(np.float32)
            dy = rng.standard_normal((100, 32, H)).astype(np.float32)

            def forward(layer=layer, x=x):
                layer.forward(x, keep=False)

            def train(layer=layer, x=x, dy=dy):
                layer.forward(x, copy=False)
                layer.backward(dy)

            yield name, H, "inference", forward
            yield name, H, "train", train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="mingru,gru_reset_after,lstm")
    ap.add_argument("--hidden", default="64,256")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    variants = args.variants.split(",")
    sizes = [int(h) for h in args.hidden.split(",")]
    most = numba.config.NUMBA_NUM_THREADS
    cases = list(_cases(variants, sizes))
    results: dict[tuple, float] = {}
    for busy in (False, True):
        stop = mp.Event()
        neighbours = [mp.Process(target=_spin, args=(stop,), daemon=True)
                      for _ in range(os.cpu_count() or 1)] if busy else []
        for p in neighbours:
            p.start()
        time.sleep(0.5 if busy else 0)
        try:
            for name, H, mode, fn in cases:
                for threads in (1, most):
                    numba.set_num_threads(threads)
                    results[(busy, name, H, mode, threads)] = median_ms(fn, args.repeats)
        finally:
            stop.set()
            for p in neighbours:
                p.join()
            numba.set_num_threads(most)
    from gruablate.backends.cpu import runtime

    waits = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                                         "NUMBA_THREADING_LAYER") if k in os.environ}
    print(f"Numba threading layer: {numba.threading_layer()}; environment: {waits or 'none'};"
          f" tile {runtime.TILE}; {most} threads; {os.cpu_count()} logical cores")
    print()
    print(f"| variant | H | mode | quiet, 1 thread | quiet, {most} | busy, 1 thread |"
          f" busy, {most} | busy {most} / busy 1 |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, H, mode, _ in cases:
        q1, qn = results[(False, name, H, mode, 1)], results[(False, name, H, mode, most)]
        b1, bn = results[(True, name, H, mode, 1)], results[(True, name, H, mode, most)]
        print(f"| `{name}` | {H} | {mode} | {q1:.2f} | {qn:.2f} | {b1:.2f} | {bn:.2f} |"
              f" {bn / b1:.2f} |")


if __name__ == "__main__":
    main()
