"""A cell whose recurrence is linear in ``h`` beside JAX's ``lax.scan`` of the same cell.

    python benchmarks/jax_scan.py [--hidden 64,256,512] [--rounds 5]

``mingru`` (``u = σ(W_u x + b_u)``, ``ĥ = W_c x + b_c``, ``h' = u ⊙ h + (1 − u) ⊙ ĥ``)
written in JAX as its user would write it at its best: both products over the whole
sequence before the scan (one ``x @ W`` each), ``lax.scan`` over the element-wise
step, under ``jax.jit``; the training step is ``jax.vjp`` of that function against a
fixed upstream gradient, giving every parameter's, the input's and the initial state's
gradient, as gruablate's ``forward`` + ``backward`` do. Also JAX's
``lax.associative_scan`` (the parallel prefix of the linear recurrence, Feng et al.'s
"parallel mode"). T = 100, B = 32, I = H, float32, the process pinned to the cores it
may use (XLA's CPU pool is as wide as the machine: run it on a machine of the thread
count you mean, or under ``taskset``). Before timing, each side's outputs and gradients
are compared in float64. Each implementation is timed in a block of its own after a
pause (see ``main``): the median over rounds of the median of seven calls.

Needs ``jax`` (``pip install jax``): not a dependency of gruablate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np
from _timing import median_ms  # benchmarks/ is sys.path[0] when run
from jax import lax
from jax import numpy as jnp

import gruablate
from gruablate.envinfo import cpu_model, vector_extensions

jax.config.update("jax_enable_x64", True)  # float64 for the check; timing is float32
PAUSE = 2.0  # seconds before each implementation's calls: the others' threads go idle


def _products(params, x):
    W_u, W_c, b_u, b_c = params
    u = jax.nn.sigmoid(x @ W_u.T + b_u)
    c = x @ W_c.T + b_c
    return u, c


def mingru_scan(params, x, h0):
    """``lax.scan`` over the steps: ``(y, h_T)``."""
    u, c = _products(params, x)

    def step(h, uc):
        u_t, c_t = uc
        h = u_t * h + (1 - u_t) * c_t
        return h, h

    hT, y = lax.scan(step, h0, (u, c))
    return y, hT


def mingru_associative(params, x, h0):
    """The same layer as a parallel prefix: ``h_t = a_t h_{t-1} + b_t``."""
    u, c = _products(params, x)
    a, b = u, (1 - u) * c
    b = b.at[0].add(a[0] * h0)

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    _, y = lax.associative_scan(combine, (a, b))
    return y, y[-1]


def training_step(fn):
    """Forward, then every gradient against ``dy`` (and zero on the last state)."""

    def step(params, x, h0, dy):
        (y, hT), pullback = jax.vjp(fn, params, x, h0)
        return y, pullback((dy, jnp.zeros_like(hT)))

    return jax.jit(step)


def _layer_params(layer):
    p = layer.params
    return tuple(jnp.asarray(p[n]) for n in ("W_u", "W_c", "b_u", "b_c"))


def check(fn, H: int) -> None:
    """JAX's layer and gruablate's give the same outputs and gradients (float64)."""
    layer = gruablate.RecurrentLayer("mingru", H, H, seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 4, H))
    dy = rng.standard_normal((10, 4, H))
    y, _ = layer.forward(x)
    dx, _, _ = layer.backward(dy)
    y_j, (grads, dx_j, _) = training_step(fn)(_layer_params(layer), jnp.asarray(x),
                                             jnp.zeros((4, H)), jnp.asarray(dy))
    np.testing.assert_allclose(np.asarray(y_j), y, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(dx_j), dx, rtol=1e-9, atol=1e-10)
    for name, g in zip(("W_u", "W_c", "b_u", "b_c"), grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), layer.grads[name], rtol=1e-9, atol=1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="64,256,512")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    peers = {"lax.scan": mingru_scan, "associative_scan": mingru_associative}
    print(f"# CPU: {cpu_model()} ({', '.join(vector_extensions())}), {threads} cores"
          f" (gruablate {numba.get_num_threads()} threads; jax {jax.__version__},"
          f" XLA's pool on the same cores), float32, T=100, B=32, I=H, mingru")
    print("| H | mode | gruablate ms | lax.scan ms | lax.scan / gruablate |"
          " associative_scan ms | associative_scan / gruablate |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for H in (int(h) for h in args.hidden.split(",")):
        for fn in peers.values():
            check(fn, min(H, 16))
        for mode, fns in _cases(H, peers).items():
            # Each implementation's calls in a block of their own after a pause: XLA's
            # and Numba's idle threads spin a while before they sleep, and interleaved
            # calls ran beside the other's spinning threads.
            m = {}
            for k, fn in fns.items():
                time.sleep(PAUSE)
                m[k] = statistics.median(median_ms(fn, 7) for _ in range(args.rounds))
            g, s, a = m["gruablate"], m["lax.scan"], m["associative_scan"]
            print(f"| {H} | {mode} | {g:.3f} | {s:.3f} | {s / g:.2f} | {a:.3f} |"
                  f" {a / g:.2f} |", flush=True)


def _cases(H: int, peers: dict) -> dict[str, dict]:
    """The calls to time at size ``H``: per mode, gruablate's and each peer's."""
    layer = gruablate.RecurrentLayer("mingru", H, H, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 32, H)).astype(np.float32)
    dy = rng.standard_normal((100, 32, H)).astype(np.float32)
    params = _layer_params(layer)
    xj, dyj, h0 = jnp.asarray(x), jnp.asarray(dy), jnp.zeros((32, H), jnp.float32)
    infer = {k: jax.jit(f) for k, f in peers.items()}
    train = {k: training_step(f) for k, f in peers.items()}

    def ours_train():
        layer.forward(x, copy=False)
        layer.backward(dy)

    return {
        "inference": {"gruablate": lambda: layer.forward(x, keep=False, copy=False),
                      **{k: (lambda f=f: f(params, xj, h0)[0].block_until_ready())
                         for k, f in infer.items()}},
        "train": {"gruablate": ours_train,
                  **{k: (lambda f=f: jax.block_until_ready(f(params, xj, h0, dyj)))
                     for k, f in train.items()}},
    }

if __name__ == "__main__":
    main()
