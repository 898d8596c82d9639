"""The kernels printed from a cell's equations beside the hand-shaped switch kernels.

Every built-in is run twice in one process: as its switch spec (``kernels.py``) and as
an ``equations`` spec of the equations it renders (``ir_kernels.py``), same weights,
same inputs. The two are timed in alternating rounds (a shared machine drifts by 10-20 %
over a minute; alternating puts both under the same drift), each round the median of
``--repeats`` calls. Prints the median over rounds of a training step (forward +
backward) and of inference, and the ratio switch time / equations time (below 1: the
equations kernels are slower).

    python benchmarks/equations_vs_switches.py --hidden 64 256 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_ms  # noqa: E402

from gruablate import RecurrentLayer, get_variant, list_variants  # noqa: E402
from gruablate.backends.cpu.runtime import TILE  # noqa: E402
from gruablate.cells.spec import Variant  # noqa: E402
from gruablate.envinfo import cpu_model, vector_extensions  # noqa: E402


def twin(v: Variant) -> Variant:
    return Variant.from_dict({"name": f"{v.name}-eq", "equations": v.equations(),
                              "init": v.initial_values})


def step_times(layers: list[RecurrentLayer], x: np.ndarray, dy: np.ndarray, repeats: int,
               rounds: int) -> list[tuple[float, float]]:
    """Per layer: median over alternating rounds of (train ms, inference ms)."""
    times: list[list[tuple[float, float]]] = [[] for _ in layers]
    for _ in range(rounds):
        for k, layer in enumerate(layers):
            def train(layer=layer):
                layer.forward(x, copy=False)
                layer.backward(dy)

            def infer(layer=layer):
                layer.forward(x, keep=False)

            times[k].append((median_ms(train, repeats), median_ms(infer, repeats)))
    return [(statistics.median(t for t, _ in ts), statistics.median(i for _, i in ts))
            for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="*", default=None)
    ap.add_argument("--hidden", nargs="*", type=int, default=[64, 256])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the records here")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    names = args.variants or list_variants()
    print(f"# CPU: {cpu_model()} ({', '.join(vector_extensions())}), tile {TILE},"
          f" {args.threads} threads, float32, T={args.seq_len}, B={args.batch}, I=H")
    print("variant | H | switch train ms | equations train ms | ratio |"
          " switch inf ms | equations inf ms | ratio")
    records = []
    rng = np.random.default_rng(0)
    for H in args.hidden:
        x = rng.standard_normal((args.seq_len, args.batch, H)).astype(np.float32)
        dy = rng.standard_normal((args.seq_len, args.batch, H)).astype(np.float32)
        for name in names:
            v = get_variant(name)
            a = RecurrentLayer(v, H, H, seed=0)
            e = RecurrentLayer(twin(v), H, H, seed=0)
            for k in a.params:
                e.params[k][:] = a.params[k]
            (ta, ia), (te, ie) = step_times([a, e], x, dy, args.repeats, args.rounds)
            print(f"{name} | {H} | {ta:.2f} | {te:.2f} | {ta / te:.2f} | {ia:.2f} |"
                  f" {ie:.2f} | {ia / ie:.2f}", flush=True)
            records.append(dict(variant=name, hidden=H, switch_train_ms=ta,
                                equations_train_ms=te, switch_infer_ms=ia,
                                equations_infer_ms=ie, cpu=cpu_model(), tile=TILE,
                                threads=args.threads))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
