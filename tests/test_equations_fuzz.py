"""Random cells: every valid set of equations compiles, runs and differentiates right.

A seeded generator writes cells with intermediates, extra states, products on states
and on computed values (so several passes), diagonal weights, divisions, parameter-only
values and the raw input. Oracles: the forward pass against a NumPy interpreter of the
parsed equations (``gruablate.cells.reference.interpret``: it shares only the parser
with the code under test: no graph, no schedule, no generated code), and every
gradient against central finite differences of the kernels' own forward pass.
``GRUABLATE_FUZZ_CELLS=40`` runs more of them (``GRUABLATE_FUZZ_FIRST`` the first
seed); 160 seeds passed when this was written.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import central_differences as _fd

from gruablate import RecurrentLayer
from gruablate.cells.reference import interpret
from gruablate.cells.spec import Variant

N_CELLS = int(os.environ.get("GRUABLATE_FUZZ_CELLS", "6"))
FIRST = int(os.environ.get("GRUABLATE_FUZZ_FIRST", "0"))  # seeds FIRST .. FIRST + N - 1
H, T, B = 3, 3, 2


def random_cell(seed: int) -> list[str]:
    """Equations of a random valid cell (no ReLU: its kink defeats finite differences)."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    states = ["h"] + (["c"] if rng.random() < 0.5 else [])
    square = rng.random() < 0.3
    names: list[str] = []
    eqs: list[str] = []
    n_params = [0]

    def fresh() -> str:
        n_params[0] += 1
        return f"k{n_params[0]}"

    def leaf(depth: int) -> str:
        options = ["state", "vec", "const", "wx"] + (["inter"] if names else [])
        options += ["x"] if square else []
        options += ["ux"] * 2
        kind = pick(options)
        if kind == "state":
            return pick(states)
        if kind == "vec":
            return f"b_{fresh()}" if rng.random() < 0.5 else f"p_{fresh()} ⊙ {pick(states)}"
        if kind == "const":
            return pick(["0.5", "2", "1.5"])
        if kind == "wx":
            return f"W_{fresh()} x"
        if kind == "x":
            return "x"
        if kind == "inter":
            return pick(names)
        operand = pick(["h", "tanh(h)"] + states[1:] + [f"({n} ⊙ h)" for n in names]
                       + names)
        return f"U_{fresh()} {operand}"

    def expr(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return leaf(depth)
        op = pick(["+", "−", "⊙", "div", "σ", "tanh", "+"])
        if op in ("σ", "tanh"):
            return f"{op}({expr(depth - 1)})"
        if op == "div":
            return f"{expr(depth - 1)} / (2 + σ({expr(depth - 1)}))"
        return f"({expr(depth - 1)} {op} {expr(depth - 1)})"

    for _ in range(int(rng.integers(1, 4))):
        name = f"a{len(names) + 1}"
        eqs.append(f"{name} = {pick(['σ', 'tanh'])}(W_{fresh()} x + {expr(2)})")
        names.append(name)
    if "c" in states:
        eqs.append(f"c' = {pick(names)} ⊙ c + tanh({expr(2)})")
    used = set()
    for e in eqs:
        rhs = e.split(" = ", 1)[1] + " "
        used |= {n for n in names if any(f"{n}{end}" in rhs for end in " )")}
    rest = [n for n in names if n not in used]
    tail = " + ".join(f"{n} ⊙ {pick(['h', 'tanh(h)'])}" for n in rest) or "0.5 ⊙ h"
    hc = " ⊙ tanh(c')" if "c" in states else ""
    eqs.append(f"h' = tanh(U_{fresh()} h + W_{fresh()} x + {expr(2)}){hc} + {tail}")
    return eqs


@pytest.mark.parametrize("seed", range(FIRST, FIRST + N_CELLS))
def test_random_cell_forward_and_gradients(seed):
    equations = random_cell(seed)
    v = Variant.from_dict({"name": f"fuzz{seed}", "equations": equations})
    I = H if v.cell.reads_x else 2
    layer = RecurrentLayer(v, I, H, seed=seed, dtype="float64")
    rng = np.random.default_rng(100 + seed)
    S = len(v.state_names)
    x = rng.standard_normal((T, B, I))
    s0 = tuple(0.5 * rng.standard_normal((B, H)) for _ in range(S))
    dy = rng.standard_normal((T, B, H))
    dsT = tuple(rng.standard_normal((B, H)) for _ in range(S))
    arg = (lambda a: a if S > 1 else a[0])
    y, sT = layer.forward(x, arg(s0), keep=False)
    P = {k: p.copy() for k, p in layer.params.items()}
    ry, rs = interpret(equations, P, x, dict(zip(v.state_names, s0, strict=True)))
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-12, err_msg=str(equations))
    for got, s in zip(sT if S > 1 else (sT,), v.state_names, strict=True):
        np.testing.assert_allclose(got, rs[s], rtol=1e-12, atol=1e-12)

    layer.forward(x, arg(s0))
    dx, ds0, grads = layer.backward(dy, arg(dsT))
    grads = {k: g.copy() for k, g in grads.items()}

    def loss():
        yy, ss = layer.forward(x, arg(s0), keep=False)
        ss = ss if S > 1 else (ss,)
        return float(np.sum(yy * dy) + sum(np.sum(a * b) for a, b in zip(ss, dsT,
                                                                         strict=True)))

    for k, p in layer.params.items():
        np.testing.assert_allclose(grads[k], _fd(loss, p), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{k} of {equations}")
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-5, atol=1e-7, err_msg="x")
    for s, a, d in zip(v.state_names, s0, ds0 if S > 1 else (ds0,), strict=True):
        np.testing.assert_allclose(d, _fd(loss, a), rtol=1e-5, atol=1e-7, err_msg=s)
