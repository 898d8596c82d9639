"""The large products a training step hoists out of its time loop: gruablate's own
product beside the BLAS NumPy ships (and PyTorch's), on the shapes the kernels run.

    python benchmarks/hoisted_products.py [--hidden 128,256,512] [--threads 2]

For a cell with ``n`` input blocks (``gru``: 3, ``lstm``: 4), T = 100, B = 32, I = H,
float32 (the shapes of ``run bench --preset standard``; the fastrnns size has B = 64):

- *input product*: ``x W^T``, (T·B × I) by (I × nH), before the forward loop;
- *input gradient*: ``dG W``, (T·B × nH) by (nH × I), after the backward loop;
- *weight gradient*: ``dG^T x``, (nH × T·B) by (T·B × I), the long-K product.

gruablate's product is called exactly as the printed kernels call it (``runtime.gemm``
with the same strides: ``W`` read transposed in place, ``dG`` transposed by its
strides); NumPy's on contiguous operands laid out as BLAS wants them (its best case:
the transposes are free views), its BLAS limited to the same threads (threadpoolctl).
Each library's products timed in a block of their own after a pause (interleaved, each
ran beside the other's spinning threads: see the comment in ``main``), the median over
rounds of the median of seven calls; GFLOP/s and the ratio
BLAS time / gruablate time (above 1: gruablate faster). The same bits on every run of
one thread count are asked of the kernels (``docs/ARCHITECTURE.md``); this measures
whether handing these products to a BLAS would buy speed worth asking it of a BLAS.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
from _timing import median_ms  # benchmarks/ is sys.path[0] when run

from gruablate.backends.cpu import runtime
from gruablate.envinfo import cpu_model, vector_extensions

PAUSE = 2.0  # seconds before each library's calls: the other's threads go idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="128,256,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    from threadpoolctl import threadpool_info, threadpool_limits

    numba.set_num_threads(args.threads)
    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
                     for i in threadpool_info() if i["user_api"] == "blas")
    print(f"# CPU: {cpu_model()} ({', '.join(vector_extensions())}), tile {runtime.TILE},"
          f" {args.threads} threads, float32, T=100, B={args.batch}, I=H; NumPy's BLAS:"
          f" {blas}")
    print("| cell | H | product | M × K × N | gruablate GFLOP/s | BLAS GFLOP/s |"
          " BLAS time / gruablate time |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    TB = 100 * args.batch
    rows = []  # (cell, H, what, (M, K, N), ours, theirs)
    for H in (int(h) for h in args.hidden.split(",")):
        for cell, n in (("gru", 3), ("lstm", 4)):
            N = n * H
            x = rng.standard_normal((TB, H)).astype(np.float32)
            W = rng.standard_normal((N, H)).astype(np.float32)  # (nH, I), as stored
            dG = rng.standard_normal((TB, N)).astype(np.float32)
            xp, dx, dW = (np.empty(s, np.float32) for s in ((TB, N), (TB, H), (N, H)))
            WT, dGT = np.ascontiguousarray(W.T), np.ascontiguousarray(dG.T)
            xf, Wf, dGf = x.reshape(-1), W.reshape(-1), dG.reshape(-1)
            rows += [
                (cell, H, "input product", (TB, H, N), xp,
                 lambda xf=xf, Wf=Wf, xp=xp, H=H, N=N: runtime.gemm(
                     xf, 0, H, 1, TB, H, Wf, 0, 1, H, N, xp.reshape(-1), 0, N, 0),
                 lambda x=x, WT=WT, xp=xp: np.matmul(x, WT, out=xp)),
                (cell, H, "input gradient", (TB, N, H), dx,
                 lambda dGf=dGf, Wf=Wf, dx=dx, H=H, N=N: runtime.gemm(
                     dGf, 0, N, 1, TB, N, Wf, 0, H, 1, H, dx.reshape(-1), 0, H, 0),
                 lambda dG=dG, W=W, dx=dx: np.matmul(dG, W, out=dx)),
                (cell, H, "weight gradient", (N, TB, H), dW,
                 lambda dGf=dGf, xf=xf, dW=dW, H=H, N=N: runtime.gemm(
                     dGf, 0, 1, N, N, TB, xf, 0, H, 1, H, dW.reshape(-1), 0, H, 0),
                 lambda dGT=dGT, x=x, dW=dW: np.matmul(dGT, x, out=dW)),
            ]
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for *_, (_, K, _), out, ours, theirs in rows:  # the same products
            ours()
            got = out.copy()
            theirs()
            np.testing.assert_allclose(got, out, rtol=2e-3, atol=2e-3 * np.sqrt(K))
        # One library at a time, each after a pause: OpenBLAS's idle threads spin for
        # about 2^28 cycles before they sleep, and spinning on the second core they
        # halved gruablate's speed where its calls were interleaved with BLAS's.
        times: dict[str, list[list[float]]] = {"ours": [], "blas": []}
        for key, index in (("ours", 5), ("blas", 6)):
            time.sleep(PAUSE)
            times[key] = [[median_ms(r[index]) for _ in range(args.rounds)] for r in rows]
    for r, t_ours, t_blas in zip(rows, times["ours"], times["blas"], strict=True):
        cell, H, what, (M, K, N) = r[:4]
        o, b = statistics.median(t_ours), statistics.median(t_blas)
        gf = 2.0 * M * K * N / 1e6
        print(f"| `{cell}` | {H} | {what} | {M} × {K} × {N} | {gf / o:.0f} | {gf / b:.0f} |"
              f" {b / o:.2f} |", flush=True)

if __name__ == "__main__":
    main()
