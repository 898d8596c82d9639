"""The equation notation of a cell spec: text in, a small syntax tree out.

One equation is one assignment, ``name = expression`` or ``name' = expression``, in the
notation the catalogue prints (``docs/VARIANTS.md``, "Write your own cell"). The parser
is a grammar (Lark, LALR), never ``eval``: a character outside the grammar is a
:class:`SpecError` naming the equation and the column, so nothing a spec says travels
further than the tree below, whose leaves are numbers and checked names.

The tree is made of tuples, which :mod:`.ir` turns into the cell's graph:

``("num", value)``, ``("var", name, primed)``, ``("call", function, arg, ...)`` (one
argument, or several for ``mean`` and ``ln``),
``("mat", matrix, operand)`` (``W_i x``, ``U_c (r ⊙ h)``), ``("neg", a)``, and
``("add" | "sub" | "mul" | "div", a, b)``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import SpecError

#: The functions of the notation, by every spelling accepted.
FUNCTIONS = {
    "sigmoid": "sigmoid", "σ": "sigmoid", "tanh": "tanh", "relu": "relu", "ReLU": "relu",
    "identity": "identity", "sqrt": "sqrt", "mean": "mean", "ln": "ln",
}
#: Functions over the hidden units of a row rather than one unit: ``mean(a)`` is the mean
#: of ``a`` over the H units (the same for every unit), ``mean(a, b, ...)`` the mean over
#: the units of ``a``, ``b``, ... side by side; ``ln(a, b, ...)`` is ``a`` normalised by
#: the mean and variance of that concatenation (layer normalisation, Ba et al. 2016, as
#: haste computes it: population variance, ε = 1e-5, no gain or bias of its own).
REDUCTIONS = ("mean", "ln")
#: ε of ``ln``: haste's and PyTorch's LayerNorm default.
LN_EPSILON = 1e-5

# Unicode spellings replaced before parsing. Hats and tildes become suffixes, so that
# ``ĥ`` and ``h_hat`` are one name.
_REPLACE = {
    "⊙": "*", "∘": "*", "−": "-", "–": "-", "′": "'", "’": "'",
    "σ": "sigmoid",
}
_MARKS = {"\u0302": "_hat", "\u0303": "_tilde", "\u0304": "_bar"}

_GRAMMAR = r"""
?start: equation
equation: target "=" sum
target: NAME PRIME?
?sum: product
    | sum "+" product   -> add
    | sum "-" product   -> sub
?product: unary
    | product "*" unary -> mul
    | product "/" unary -> div
?unary: "-" unary       -> neg
    | MATRIX atom       -> mat
    | atom
?atom: NUMBER           -> num
    | NAME PRIME?       -> var
    | NAME "(" sum ("," sum)* ")"  -> call
    | "(" sum ")"
MATRIX.2: /[WU]_[A-Za-z0-9]+(?![A-Za-z0-9_])/
NAME: /[A-Za-z][A-Za-z0-9_]*/
PRIME: "'"
NUMBER: /(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?/
%ignore " "
"""


@dataclass(frozen=True)
class Equation:
    """One parsed assignment: ``target`` (primed: a state's new value) ``= expr``."""

    target: str
    primed: bool
    expr: tuple
    text: str  # the equation as written, for messages


@cache
def _parser():
    from lark import Lark

    return Lark(_GRAMMAR, parser="lalr", maybe_placeholders=False)


def normalise(text: str) -> str:
    """The equation with its Unicode spellings replaced by the ASCII ones."""
    text = unicodedata.normalize("NFD", text)
    for mark, suffix in _MARKS.items():
        text = text.replace(mark, suffix)
    text = unicodedata.normalize("NFC", text)
    for old, new in _REPLACE.items():
        text = text.replace(old, new)
    return text.replace("\t", " ")


def _tree(node: Any) -> tuple:
    """The Lark tree as the plain tuples of the module docstring."""
    from lark import Token

    if isinstance(node, Token):
        if node.type == "NUMBER":
            return ("num", float(node))
        return ("var", str(node), False)
    kind, ch = node.data, node.children
    if kind == "num":
        return ("num", float(ch[0]))
    if kind == "var":
        return ("var", str(ch[0]), len(ch) == 2)
    if kind == "call":
        return ("call", str(ch[0]), *(_tree(c) for c in ch[1:]))
    if kind == "mat":
        return ("mat", str(ch[0]), _tree(ch[1]))
    if kind == "neg":
        return ("neg", _tree(ch[0]))
    return (str(kind), _tree(ch[0]), _tree(ch[1]))


def parse_equation(text: Any, where: str = "") -> Equation:
    """Parse one equation; a :class:`SpecError` naming it for anything outside the
    notation."""
    from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput

    if not isinstance(text, str):
        raise SpecError(f"equation {text!r}{where} must be a string")
    label = f"equation {text!r}{where}"
    if len(text) > 1000:
        raise SpecError(f"{label[:80]}...: longer than 1000 characters")
    source = normalise(text)
    try:
        tree = _parser().parse(source)
    except UnexpectedCharacters as exc:
        raise SpecError(f"{label}: unsupported syntax at column {exc.column}:"
                        f" {source[exc.pos_in_stream]!r} is not part of the notation") from None
    except UnexpectedInput as exc:
        col = getattr(exc, "column", "?")
        before = getattr(exc, "token_history", None) or []
        if before and before[-1].type == "MATRIX":
            m = str(before[-1])
            raise SpecError(f"{label}: {m} is a matrix and must multiply an operand written"
                            f" right after it ({m} x, {m} h, {m} (expression))") from None
        raise SpecError(f"{label}: unsupported syntax at column {col}") from None
    except LarkError as exc:  # pragma: no cover - any other parse failure
        raise SpecError(f"{label}: unsupported syntax ({type(exc).__name__})") from None
    target, expr = tree.children
    name = str(target.children[0])
    primed = len(target.children) == 2
    tree_ = _tree(expr)
    _check_numbers(tree_, label)
    return Equation(name, primed, tree_, text)


def _check_numbers(node: tuple, label: str) -> None:
    if node[0] == "num":
        if not math.isfinite(node[1]) or abs(node[1]) > 1e30:
            raise SpecError(f"{label}: the constant {node[1]!r} is out of range")
        return
    for child in node[1:]:
        if isinstance(child, tuple):
            _check_numbers(child, label)


#: What a parameter name looks like once normalised: its role letter, then a subscript.
PARAM_NAME = re.compile(r"([WUbp])_([A-Za-z0-9]+)")


def param_role(name: str) -> str | None:
    """``"W"``, ``"U"``, ``"b"`` or ``"p"`` for a parameter name, else None."""
    m = PARAM_NAME.fullmatch(name)
    return m.group(1) if m else None


def display_name(name: str) -> str:
    """``h_hat`` as ``ĥ`` (one letter and a mark); any other name as it is."""
    for mark, suffix in _MARKS.items():
        if len(name) == 1 + len(suffix) and name.endswith(suffix):
            return unicodedata.normalize("NFC", name[0] + mark)
    return name


def render(node: tuple, prec: int = 0, latex: bool = False) -> str:
    """The tree as text in the Unicode notation (the inverse of :func:`parse_equation`,
    up to spacing and redundant parentheses), or as LaTeX."""
    kind = node[0]
    if kind == "num":
        v = node[1]
        return repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    if kind == "var":
        return _latex_name(node[1], node[2]) if latex else (
            display_name(node[1]) + ("'" if node[2] else ""))
    if kind == "call":
        fn = FUNCTIONS.get(node[1], node[1])
        if latex:
            name = {"sigmoid": r"\sigma", "tanh": r"\tanh", "relu": r"\mathrm{ReLU}",
                    "sqrt": r"\sqrt"}.get(fn, r"\mathrm{" + fn + "}")
            args = ", ".join(render(a, 0, latex) for a in node[2:])
            if fn == "sqrt":
                return f"{name}{{{args}}}"
            return f"{name}\\left({args}\\right)"
        fn = "σ" if fn == "sigmoid" else node[1]
        return f"{fn}({', '.join(render(a) for a in node[2:])})"
    if kind == "mat":
        inner = node[2]
        arg = render(inner, 0, latex)
        if inner[0] not in ("var", "call", "num"):
            arg = f"\\left({arg}\\right)" if latex else f"({arg})"
        name = _latex_name(node[1], False) if latex else node[1]
        return f"{name} {arg}"
    if kind == "neg":
        return ("-" if latex else "−") + render(node[1], 3, latex)
    ops = {"add": (" + ", 1), "sub": (" − ", 1), "mul": (" ⊙ ", 2), "div": (" / ", 2)}
    sym, p = ops[kind]
    if latex:
        sym = {"add": " + ", "sub": " - ", "mul": r" \odot ", "div": " / "}[kind]
    right_prec = p + 1 if kind in ("sub", "div") else p
    text = render(node[1], p, latex) + sym + render(node[2], right_prec, latex)
    if p < prec:
        return f"\\left({text}\\right)" if latex else f"({text})"
    return text


def _latex_name(name: str, primed: bool) -> str:
    for suffix in _MARKS.values():
        if name.endswith(suffix) and len(name) == 1 + len(suffix):
            cmd = {"_hat": r"\hat", "_tilde": r"\tilde", "_bar": r"\bar"}[suffix]
            name = f"{cmd}{{{name[0]}}}"
            break
    else:
        if "_" in name:
            head, sub = name.split("_", 1)
            name = f"{head}_{{{sub}}}"
    return name + ("'" if primed else "")


def equation_text(eq: Equation, latex: bool = False) -> str:
    """One equation in its canonical spelling (what a spec's identity is read from)."""
    target = _latex_name(eq.target, eq.primed) if latex else (
        display_name(eq.target) + ("'" if eq.primed else ""))
    return f"{target} = {render(eq.expr, 0, latex)}"
