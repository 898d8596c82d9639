"""Any gruablate cell as the TorchScript a PyTorch user writes by hand, printed from its
equations: the peer of the bridge benchmark (``benchmarks/torch_bridge.py``).

The shape is that of PyTorch's ``benchmarks/fastrnns/custom_lstms.py``: the cell's step
in TorchScript (``torch.mm`` on the input and on each recurrent operand, the gates
element-wise), a scripted loop over time stacking the outputs, and autograd for the
backward pass. Nothing of a spec's text reaches the source: every name becomes a
numbered identifier, every number a float literal, every function one of torch's.

    cu, params, states = script_cell(get_variant("mgu"))
    y, *last = cu.run(x, *state_tensors, *(tensors for params, in that order))
"""

from __future__ import annotations

import torch

from gruablate.cells.notation import param_role, parse_equation
from gruablate.cells.spec import Variant

_FUNCTIONS = {"sigmoid": "torch.sigmoid", "σ": "torch.sigmoid", "tanh": "torch.tanh",
              "relu": "torch.relu", "ReLU": "torch.relu"}
_OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def script_cell(variant: Variant) -> tuple[torch.jit.CompilationUnit, list[str], list[str]]:
    """``(compilation unit, parameter names, state names)``: ``cu.run(x, *states,
    *params)`` returns ``(y, *last_states)`` for ``x`` (T, B, I), states (B, H) in
    ``state names`` order (``h`` first) and the parameters in ``parameter names`` order
    (W as (H, I), U as (H, H), vectors as (H,), as ``RecurrentLayer.params`` holds them)."""
    texts = list(variant.cell_equations) if variant.is_equations else variant.equations()
    eqs = [parse_equation(t) for t in texts]
    states = ["h"] + [e.target for e in eqs if e.primed and e.target != "h"]
    params: list[str] = []
    ident: dict[str, str] = {}

    def name(key: str) -> str:
        return ident.setdefault(key, f"v{len(ident)}")

    def param(p: str) -> str:
        if p not in params:
            params.append(p)
        return f"p{params.index(p)}"

    def expr(t: tuple) -> str:
        kind = t[0]
        if kind == "num":
            return repr(float(t[1]))
        if kind == "var":
            n, primed = t[1], t[2]
            if n == "x":
                return "x_t"
            if param_role(n) in ("b", "p"):
                return param(n)
            if primed:
                return name(n + "'")
            if n in states:
                return f"s{states.index(n)}"
            return name(n)
        if kind == "call":
            inner = expr(t[2])
            fn = _FUNCTIONS.get(t[1])
            return inner if fn is None else f"{fn}({inner})"  # identity: the argument
        if kind == "mat":
            operand = "x_t" if t[2] == ("var", "x", False) else expr(t[2])
            return f"torch.mm({operand}, {param(t[1])}.t())"
        if kind == "neg":
            return f"(-{expr(t[1])})"
        return f"({expr(t[1])} {_OPS[kind]} {expr(t[2])})"

    body = []
    for e in eqs:
        target = name(e.target + ("'" if e.primed else ""))
        body.append(f"        {target} = {expr(e.expr)}")
    S = len(states)
    new = [name(s + "'") for s in states]
    state_args = ", ".join(f"s{k}: torch.Tensor" for k in range(S))
    param_args = ", ".join(f"p{k}: torch.Tensor" for k in range(len(params)))
    source = "\n".join([
        f"def run(x: torch.Tensor, {state_args}, {param_args}):",
        "    ys: List[torch.Tensor] = []",
        "    for t in range(x.size(0)):",
        "        x_t = x[t]",
        *body,
        *(f"        s{k} = {new[k]}" for k in range(S)),
        "        ys.append(s0)",
        f"    return torch.stack(ys), {', '.join(f's{k}' for k in range(S))}",
    ])
    return torch.jit.CompilationUnit(source + "\n"), params, states
