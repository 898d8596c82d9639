"""Any gruablate cell as the TorchScript a PyTorch user writes by hand, printed from its
equations: the peer of the bridge benchmark (``benchmarks/torch_bridge.py``).

The shape is that of PyTorch's ``benchmarks/fastrnns/custom_lstms.py``: the cell's step
in TorchScript (``torch.mm`` on the input and on each recurrent operand, the gates
element-wise), a scripted loop over time stacking the outputs, and autograd for the
backward pass. Nothing of a spec's text reaches the source: every name becomes a
numbered identifier, every number a float literal, every function one of torch's. A
layer normalisation (``ln(a, b, ...)``) is written as a user would: the blocks
concatenated once per step, their mean and standard deviation computed once for every
``ln`` over the same blocks, each block normalised by them.

    cu, params, states = script_cell(get_variant("mgu"))
    y, *last = cu.run(x, *state_tensors, *(tensors for params, in that order))
"""

from __future__ import annotations

import torch

from gruablate.cells.notation import FUNCTIONS, LN_EPSILON, param_role, parse_equation
from gruablate.cells.spec import Variant

_FUNCTIONS = {"sigmoid": "torch.sigmoid", "σ": "torch.sigmoid", "tanh": "torch.tanh",
              "relu": "torch.relu", "ReLU": "torch.relu", "sqrt": "torch.sqrt"}
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
    pre: list[str] = []  # statements an equation needs first (a normalisation's moments)
    blocks: dict[str, str] = {}  # an ln/mean argument's expression -> its local name
    moments: dict[tuple[str, ...], str] = {}  # a set of blocks -> its moments' prefix

    def block(text: str) -> str:
        if text not in blocks:
            blocks[text] = f"a{len(blocks)}"
            pre.append(f"        {blocks[text]} = {text}")
        return blocks[text]

    def stats(args: list[str]) -> str:
        key = tuple(sorted(set(args)))
        if key not in moments:
            k = moments[key] = f"n{len(moments)}"
            pre.extend([f"        {k}c = torch.cat([{', '.join(key)}], 1)",
                        f"        {k}m = {k}c.mean(1, keepdim=True)",
                        f"        {k}s = torch.sqrt({k}c.var(1, unbiased=False, keepdim=True)"
                        f" + {LN_EPSILON!r})"])
        return moments[key]

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
            fn = FUNCTIONS[t[1]]
            if fn in ("mean", "ln"):
                args = [block(expr(a)) for a in t[2:]]
                k = stats(args)
                return f"{k}m" if fn == "mean" else f"(({args[0]} - {k}m) / {k}s)"
            inner = expr(t[2])
            torch_fn = _FUNCTIONS.get(t[1])
            return inner if torch_fn is None else f"{torch_fn}({inner})"  # identity
        if kind == "mat":
            operand = "x_t" if t[2] == ("var", "x", False) else expr(t[2])
            return f"torch.mm({operand}, {param(t[1])}.t())"
        if kind == "neg":
            return f"(-{expr(t[1])})"
        return f"({expr(t[1])} {_OPS[kind]} {expr(t[2])})"

    body = []
    for e in eqs:
        target = name(e.target + ("'" if e.primed else ""))
        line = f"        {target} = {expr(e.expr)}"
        body += pre + [line]
        pre.clear()
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
