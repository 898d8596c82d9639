"""A cell as a graph: the equations of a spec, checked, scheduled and differentiated.

:func:`build` turns parsed equations (:mod:`.notation`) into a :class:`CellIR`: one
element ``j`` of one row at one step, as a graph of scalar operations shared by value
(the same expression is one node), plus what the backends need around it:

- the parameters by role (``W_k`` on ``x``, ``U_k`` on an H-sized operand, ``b_k``
  biases and ``p_k`` diagonal weights) and the states (``h`` first);
- the products: every ``W_k x`` is hoisted over all steps; the ``U_k`` on one operand
  form one *group* (one product per step); a group whose operand is computed within
  the step (``r ⊙ h``) splits the step into *passes*: pass ``p`` runs after the
  groups of round ``p − 1`` (round 0: the groups on the previous states);
- the backward pass, derived by reverse-mode differentiation of the graph at
  generation time: per pass, straight-line expressions (shared where equal) and where
  each gradient goes (the input-product gradient ``dgx``, a group's product gradient
  ``dP``, a vector parameter's terms, the previous states, a value of an earlier pass);
- *reductions*: ``mean(a)`` (and ``ln``, built from it) is one number per row, the
  mean of ``a`` over the H units: ``a`` is computed in one pass, summed at its end, and
  the mean read from the next pass on (kept per row and step beside the slots); its
  gradient is the sum over the units of what its readers send it, formed at the end of
  their backward pass and handed, divided by H, to every unit of ``a``;
- *slots*: the values a training forward keeps per step for the backward pass, chosen
  from the derivation — a value the backward reads that it cannot recompute cheaply
  (a gate, a product result, a state), a product's computed operand (for the weight
  gradient after the loop), a value one pass hands the next.

No backend sees the spec: they print code from this structure (``backends/cpu``), and
nothing of the spec's text reaches generated code — names become slot numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SpecError
from .notation import (
    FUNCTIONS,
    LN_EPSILON,
    REDUCTIONS,
    Equation,
    display_name,
    param_role,
    parse_equation,
)

#: Operations cheap enough to compute again in a later pass (or the backward) rather
#: than keep in a slot: a store and a load per unit cost more than a few of these.
CHEAP = ("neg", "copy", "add", "sub", "mul", "div", "sqrt")
#: The most operations a value computed again may take (ln's scale takes six).
RECOMPUTE_BUDGET = 8
#: Element-wise operations of the graph, by arity (``step`` is the derivative of ReLU).
UNARY = ("neg", "sigmoid", "tanh", "relu", "sqrt", "step", "copy")
BINARY = ("add", "sub", "mul", "div")
#: Leaves of the forward graph, readable in every pass (``zmask``: the zoneout weight of
#: the step's unit, an input that gets no gradient; ``("mean", a)`` the row mean of node
#: ``a``, readable from the pass after ``a``'s).
LOADS = ("const", "state", "vec", "wx", "ux", "xin", "zmask", "mean")
# Leaves that exist only in the backward pass: ("seed", s) the gradient arriving on s';
# ("xadj", n) node n's gradient from a later pass; ("dop", g) the transposed product of
# group g (its operand's gradient); ("carry", s) and ("dy",) inside a seed; ("radj", k)
# the gradient reduction k hands each unit of its argument (its readers' terms summed
# over the units, divided by H).


@dataclass(frozen=True)
class Group:
    """The ``U`` blocks that multiply one operand: one product per step."""

    index: int
    operand: int  # node id: a state load, or a computed value (then it has a slot)
    blocks: tuple[str, ...]  # U names, in packing order
    round: int  # runs before forward pass round + 1


@dataclass(frozen=True)
class Write:
    """A backward statement: ``target[name] (+)= node``."""

    target: str  # "dgx" (a W block), "dP" (a U block), "dvec", "xadj", "carry", "dred"
    name: str | int  # W/U/vector name, a node id (xadj), a state name (carry), or a
    # reduction (dred: the node is summed over the units, then divided by H)
    node: int
    accumulate: bool


@dataclass
class Pass:
    """One forward pass and its backward: the nodes computed, in order."""

    index: int
    forward: list[int] = field(default_factory=list)
    backward: list[int] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)


@dataclass
class CellIR:
    """See the module docstring. Node ``i`` is ``nodes[i]``, a tuple ``(kind, *args)``
    whose node arguments are ids of earlier nodes."""

    nodes: list[tuple] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)  # name -> role, first use order
    states: list[str] = field(default_factory=list)  # "h" first
    new_state: dict[str, int] = field(default_factory=dict)  # state -> node of s'
    named: dict[str, int] = field(default_factory=dict)  # equation target -> node
    products: dict[str, int] = field(default_factory=dict)  # U name -> operand node
    groups: list[Group] = field(default_factory=list)
    passes: list[Pass] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # node per slot of acts
    #: The argument node of each row mean, in order (``("mean", a)`` is reduction
    #: ``reductions.index(a)``); kept per row and step after the slots.
    reductions: list[int] = field(default_factory=list)
    #: Display names of values the notation makes without an equation (``ln``'s mean
    #: ``μ1`` and scale ``s1``), for :func:`explain`.
    labels: dict[int, str] = field(default_factory=dict)
    #: Values of the parameters alone (``σ(b_u)`` of gru3): the same at every step and
    #: row, so computed once per call, never per step, and never kept.
    invariants: list[int] = field(default_factory=list)
    pass_of: dict[int, int] = field(default_factory=dict)
    seeds: dict[str, list[tuple]] = field(default_factory=dict)  # state -> seed loads
    _index: dict[tuple, int] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ the graph
    def node(self, *key) -> int:
        """The id of node ``key``, made if new, with the simplifications that keep the
        derived code short (constants folded, ``a + 0``, ``a * 1``, ``a * 0`` dropped)."""
        kind = key[0]
        if kind in ("add", "mul"):
            a, b = key[1], key[2]
            if self._const(a) is not None and self._const(b) is None:
                a, b = b, a
            ca, cb = self._const(a), self._const(b)
            if ca is not None and cb is not None:
                return self.const(ca + cb if kind == "add" else ca * cb)
            if kind == "add" and cb == 0.0:
                return a
            if kind == "mul" and cb == 1.0:
                return a
            if kind == "mul" and cb == 0.0:
                return self.const(0.0)
            key = (kind, a, b)
        elif kind == "sub":
            ca, cb = self._const(key[1]), self._const(key[2])
            if ca is not None and cb is not None:
                return self.const(ca - cb)
            if cb == 0.0:
                return key[1]
            if ca == 0.0:
                return self.node("neg", key[2])
        elif kind == "neg":
            c = self._const(key[1])
            if c is not None:
                return self.const(-c)
            if self.nodes[key[1]][0] == "neg":
                return self.nodes[key[1]][1]
        elif kind == "div":
            cb = self._const(key[2])
            if cb == 1.0:
                return key[1]
        if key not in self._index:
            self._index[key] = len(self.nodes)
            self.nodes.append(key)
        return self._index[key]

    def const(self, value: float) -> int:
        return self.node("const", float(value))

    def _const(self, i: int) -> float | None:
        n = self.nodes[i]
        return n[1] if n[0] == "const" else None

    def children(self, i: int) -> tuple[int, ...]:
        n = self.nodes[i]
        if n[0] in UNARY:
            return (n[1],)
        if n[0] in BINARY:
            return (n[1], n[2])
        return ()

    def recomputable(self, i: int) -> bool:
        """Whether a later pass computes operation ``i`` again from what it reads
        rather than read it from a slot: a few cheap operations (:data:`CHEAP`) on
        leaves readable in every pass (inputs, products, states, row means) and
        parameters-only values, such as ``ln``'s deviations ``W_k x − μ`` and scale."""
        seen: set[int] = set()
        stack = [i]
        while stack:
            k = stack.pop()
            if k in seen or not self.is_op(k) or k in self.invariants:
                continue
            if self.nodes[k][0] not in CHEAP or len(seen) >= RECOMPUTE_BUDGET:
                return False
            seen.add(k)
            stack.extend(self.children(k))
        return True

    def reduction(self, i: int) -> int:
        """The reduction a ``("mean", a)`` node reads."""
        return self.reductions.index(self.nodes[i][1])

    def mean(self, a: int) -> int:
        """The row mean of node ``a`` (made an operation of its own pass if a load)."""
        if not self.is_op(a):
            a = self.node("copy", a)
        if a not in self.reductions:
            self.reductions.append(a)
        return self.node("mean", a)

    def is_op(self, i: int) -> bool:
        return self.nodes[i][0] in UNARY or self.nodes[i][0] in BINARY

    # ------------------------------------------------------------ queries
    @property
    def zoneout(self) -> bool:
        """The cell's new ``h`` is zoned out: ``h' = m ⊙ h + (1 − m) ⊙ (the cell's h')``
        with ``m`` a per-step input (:func:`build`'s ``zoneout``)."""
        return ("zmask",) in self._index

    @property
    def is_scan(self) -> bool:
        """Nothing crosses the hidden units (no recurrent product, no row mean): each
        unit of each row can walk the sequence alone (minGRU)."""
        return not self.groups and not self.reductions

    @property
    def reads_x(self) -> bool:
        """``x`` appears in an element-wise expression (``tanh(x)``): needs I = H."""
        return ("xin",) in self._index

    @property
    def w_names(self) -> list[str]:
        return [n for n, r in self.params.items() if r == "W"]

    @property
    def u_names(self) -> list[str]:
        """U blocks in packing order: by group, then first use."""
        return [u for g in self.groups for u in g.blocks]

    @property
    def vec_names(self) -> list[str]:
        return [n for n, r in self.params.items() if r in ("b", "p")]

    def group_state(self, g: Group) -> str | None:
        """The state a group multiplies, or None for a computed operand."""
        n = self.nodes[g.operand]
        return n[1] if n[0] == "state" else None

    def slot(self, i: int) -> int:
        return self.slots.index(i)

    def state_slot(self, s: str) -> int | None:
        """The slot keeping state ``s``'s new value per step (``h`` has ``y``)."""
        node = self.new_state[s]
        return self.slots.index(node) if node in self.slots else None


# ---------------------------------------------------------------------- building
def build(equations: list[str] | tuple[str, ...], where: str = "", zoneout: bool = False
          ) -> CellIR:
    """Parse, check and lower a cell's equations (``SpecError`` naming the equation).

    With ``zoneout`` the new ``h`` becomes ``m ⊙ h + (1 − m) ⊙ h'`` (Krueger et al.
    2016, on ``h`` as haste does): ``m`` is a per-step, per-unit input of the kernels
    (a Bernoulli mask in training, its expectation at evaluation), and the backward
    pass is derived through it like through any other statement."""
    if not isinstance(equations, list | tuple) or not equations:
        raise SpecError(f"'equations'{where} must be a non-empty list of strings")
    if len(equations) > 64:
        raise SpecError(f"'equations'{where} has {len(equations)} equations; at most 64")
    parsed = [parse_equation(e, where) for e in equations]
    return _Builder(parsed, where, zoneout).run()


class _Builder:
    def __init__(self, eqs: list[Equation], where: str, zoneout: bool = False) -> None:
        self.eqs, self.where, self.zoneout = eqs, where, zoneout
        self.ir = CellIR()
        self.env: dict[str, int] = {}  # assigned so far: "g", "c'"
        self.read_states: set[str] = set()
        self.used_names: set[str] = set()
        self.eq: Equation | None = None

    def fail(self, msg: str) -> SpecError:
        label = f"equation {self.eq.text!r}" if self.eq else "equations"
        return SpecError(f"{label}{self.where}: {msg}")

    def run(self) -> CellIR:
        ir = self.ir
        targets: dict[str, Equation] = {}
        self.states = []
        for eq in self.eqs:
            self.eq = eq
            key = eq.target + ("'" if eq.primed else "")
            if key in targets:
                raise self.fail(f"{display_name(eq.target)}{chr(39) * eq.primed} is assigned"
                                " twice")
            if eq.target == "x":
                raise self.fail("x is the input and cannot be assigned")
            if param_role(eq.target):
                raise self.fail(f"{eq.target} is a parameter name (W_, U_, b_, p_ name"
                                " parameters) and cannot be assigned")
            if eq.target in FUNCTIONS:
                raise self.fail(f"{eq.target} is a function and cannot be assigned")
            targets[key] = eq
            if eq.primed:
                self.states.append(eq.target)
        for eq in self.eqs:
            self.eq = eq
            if not eq.primed and eq.target in self.states:
                raise self.fail(f"{eq.target} is a state ({eq.target}' is assigned) and"
                                " cannot also be an intermediate")
        self.eq = None
        if "h" not in self.states:
            raise self.fail("h' is missing: the cell must assign the new hidden state h'")
        ir.states = ["h"] + [s for s in self.states if s != "h"]
        for eq in self.eqs:
            self.eq = eq
            node = self.expr(eq.expr)
            if eq.primed:
                if ir.nodes[node] == ("state", eq.target):
                    raise self.fail(f"state {eq.target}' = {eq.target} is never updated")
                if not ir.is_op(node):
                    node = ir.node("copy", node)
                if node in ir.new_state.values():
                    other = next(s for s, n in ir.new_state.items() if n == node)
                    raise self.fail(f"{eq.target}' equals {other}': they are one state")
                ir.new_state[eq.target] = node
                self.env[eq.target + "'"] = node
            else:
                self.env[eq.target] = node
            ir.named[eq.target + ("'" if eq.primed else "")] = node
        self.eq = None
        for eq in self.eqs:
            if not eq.primed and eq.target not in self.used_names:
                self.eq = eq
                raise self.fail(f"{display_name(eq.target)} is assigned but never used")
        for s in ir.states:
            if s not in self.read_states:
                self.eq = next(e for e in self.eqs if e.primed and e.target == s)
                if s == "h" and self.read_states:
                    continue  # h' only the output: the recurrence is in another state (SRU)
                if s == "h":
                    raise self.fail("the cell has no recurrence: no equation reads the"
                                    " previous state h (or any other state)")
                raise self.fail(f"state {s}' is assigned but {s} is never read; drop the"
                                f" prime to make {s} an intermediate")
        self.eq = None
        if not ir.w_names:
            raise self.fail("the cell never reads its input: no equation has a W_k x")
        if self.zoneout:
            m = ir.node("zmask")
            keep = ir.node("mul", m, ir.node("state", "h"))
            fresh = ir.node("mul", ir.node("sub", ir.const(1.0), m), ir.new_state["h"])
            ir.new_state["h"] = ir.node("add", keep, fresh)
        _schedule(ir)
        _differentiate(ir)
        _choose_slots(ir)
        return ir

    def use_param(self, name: str, role: str) -> None:
        self.ir.params.setdefault(name, role)

    def expr(self, t: tuple) -> int:
        ir = self.ir
        kind = t[0]
        if kind == "num":
            return ir.const(t[1])
        if kind == "var":
            return self.var(t[1], t[2])
        if kind == "call":
            fn = FUNCTIONS.get(t[1])
            if fn is None:
                raise self.fail(f"unknown function {t[1]!r}; the notation has"
                                " σ/sigmoid, tanh, relu, sqrt, identity, mean and ln")
            if fn not in REDUCTIONS and len(t) != 3:
                raise self.fail(f"{t[1]} takes one argument, not {len(t) - 2}")
            args = [self.expr(a) for a in t[2:]]
            if fn == "mean":
                return self.joint_mean(args)
            if fn == "ln":
                return self.layer_norm(args)
            return args[0] if fn == "identity" else ir.node(fn, args[0])
        if kind == "mat":
            return self.matrix(t[1], t[2])
        if kind == "neg":
            return ir.node("neg", self.expr(t[1]))
        return ir.node(kind, self.expr(t[1]), self.expr(t[2]))

    def joint_mean(self, blocks: list[int]) -> int:
        """The mean over the units of ``blocks`` side by side: the mean of their row
        means (each block is H units). Canonical order, so every spelling of one set
        of blocks is one node."""
        ir = self.ir
        blocks = sorted(set(blocks))
        total = ir.mean(blocks[0])
        for b in blocks[1:]:
            total = ir.node("add", total, ir.mean(b))
        return ir.node("div", total, ir.const(len(blocks)))

    def layer_norm(self, args: list[int]) -> int:
        """``ln(a, b, ...)``: ``a`` less the mean of the blocks ``a, b, ...`` side by
        side, over the square root of their population variance plus ε (two passes
        over the units, as haste's LayerNorm: the mean, then the squared deviations)."""
        ir = self.ir
        m = self.joint_mean(args)
        dev = {a: ir.node("sub", a, m) for a in sorted(set(args))}
        var = self.joint_mean([ir.node("mul", d, d) for d in dev.values()])
        scale = ir.node("sqrt", ir.node("add", var, ir.const(LN_EPSILON)))
        if scale not in ir.labels:
            n = 1 + sum(label.startswith("μ") for label in ir.labels.values())
            ir.labels.setdefault(m, f"μ{n}")
            ir.labels[scale] = f"s{n}"
        return ir.node("div", dev[args[0]], scale)

    def var(self, name: str, primed: bool) -> int:
        ir = self.ir
        shown = display_name(name) + ("'" if primed else "")
        if primed:
            if name not in self.states:
                raise self.fail(f"{shown} is not a state of this cell: no equation assigns"
                                f" {shown}")
            if name + "'" not in self.env:
                raise self.fail(f"{shown} is used before it is assigned")
            return self.env[name + "'"]
        if name == "x":  # x itself in an H-sized expression: the layer needs I = H
            return ir.node("xin")
        role = param_role(name)
        if role in ("W", "U"):
            shape = "H×I" if role == "W" else "H×H"
            raise self.fail(f"{name} is a matrix ({shape}) and is used here as a vector;"
                            f" write {name} x" if role == "W" else
                            f"{name} is a matrix ({shape}) and is used here as a vector;"
                            f" write {name} h (or {name} (expression))")
        if role in ("b", "p"):
            self.use_param(name, role)
            return ir.node("vec", name)
        if name in FUNCTIONS:
            raise self.fail(f"{name} is a function: write {name}(...)")
        if name in self.states:
            self.read_states.add(name)
            return ir.node("state", name)
        if name in self.env:
            self.used_names.add(name)
            return self.env[name]
        if any(e.target == name and not e.primed for e in self.eqs):
            raise self.fail(f"{shown} is used before it is assigned")
        raise self.fail(f"unknown symbol {shown!r}: not x, a parameter (W_, U_, b_, p_),"
                        f" an intermediate, or a state (no equation assigns {shown}')")

    def matrix(self, name: str, operand: tuple) -> int:
        ir = self.ir
        role = param_role(name)
        if role == "W":
            if operand != ("var", "x", False):
                raise self.fail(f"{name} multiplies x only (W_k is H×I); a matrix on an"
                                " H-sized value is a U_k")
            self.use_param(name, "W")
            return ir.node("wx", name)
        if _mentions_x(operand):
            raise self.fail(f"{name} (H×H) multiplies an H-sized value, but its operand"
                            " holds x, which is input-sized; use a W_k on x")
        node = self.expr(operand)
        if not ir.is_op(node) and ir.nodes[node][0] != "state":
            node = ir.node("copy", node)
        if name in ir.products and ir.products[name] != node:
            raise self.fail(f"{name} is used on two different operands; give each its own"
                            " matrix")
        self.use_param(name, "U")
        ir.products[name] = node
        return ir.node("ux", name)


def _mentions_x(t: tuple) -> bool:
    if t[0] == "var":
        return t[1] == "x"
    return any(isinstance(c, tuple) and _mentions_x(c) for c in t[1:])


# ---------------------------------------------------------------------- schedule
def _schedule(ir: CellIR) -> None:
    """Passes (ASAP: each value in the first pass where its inputs exist) and groups."""
    pass_of: dict[int, int] = {}

    def visit(i: int) -> int:
        if i in pass_of:
            return pass_of[i]
        n = ir.nodes[i]
        if n[0] == "ux":
            p = visit(ir.products[n[1]]) + 1
        elif n[0] == "mean":  # summed at the end of its argument's pass
            p = visit(n[1]) + 1
        elif n[0] in LOADS:
            p = 0
        else:
            p = max([1] + [visit(c) for c in ir.children(i)])
        pass_of[i] = p
        return p

    for s in ir.states:
        visit(ir.new_state[s])
    for operand in ir.products.values():
        visit(operand)
    n_passes = max(pass_of[ir.new_state[s]] for s in ir.states)
    # Then as late as the consumers allow: a value computed in the pass that reads it
    # needs no slot to travel between passes (the GRU's update gate moves to the pass
    # of h'). Product operands stay where the product needs them.
    pinned = set(ir.products.values()) | set(ir.reductions)
    consumers: dict[int, list[int]] = {}
    for i in pass_of:
        for c in ir.children(i):
            consumers.setdefault(c, []).append(i)
    for i in sorted(pass_of, reverse=True):
        if not ir.is_op(i) or i in pinned:
            continue
        later = [pass_of[k] for k in consumers.get(i, []) if ir.is_op(k)]
        pass_of[i] = min(later) if later else n_passes
    ir.pass_of = pass_of
    # A computed operand of the last pass would feed a product no pass reads: impossible,
    # since every product's result is read by some value of a later pass.
    ir.passes = [Pass(p) for p in range(1, n_passes + 1)]
    pinned |= set(ir.new_state.values())
    for i in sorted(pass_of):
        if ir.is_op(i) and i not in pinned and all(
                ir.nodes[c][0] in ("const", "vec") or c in ir.invariants
                for c in ir.children(i)):
            ir.invariants.append(i)
    for i in sorted(pass_of):
        if ir.is_op(i) and i not in ir.invariants:
            ir.passes[pass_of[i] - 1].forward.append(i)
    by_operand: dict[int, list[str]] = {}
    for u, operand in ir.products.items():
        by_operand.setdefault(operand, []).append(u)
    order = sorted(by_operand, key=lambda o: (pass_of[o], min(
        list(ir.params).index(u) for u in by_operand[o])))
    ir.groups = [Group(k, o, tuple(by_operand[o]), pass_of[o]) for k, o in enumerate(order)]


# ------------------------------------------------------------------ differentiation
def _differentiate(ir: CellIR) -> None:
    """Reverse mode over each pass, last pass first (see the module docstring)."""
    # Contributions: target -> list of (pass, node); summed per pass into one write.
    contrib: dict[tuple, list[tuple[int, int]]] = {}
    inpass: dict[int, list[int]] = {}  # forward op node -> adjoint terms in its pass

    def add(target: tuple, p: int, term: int) -> None:
        if ir.nodes[term] == ("const", 0.0):
            return
        contrib.setdefault(target, []).append((p, term))

    def route(child: int, p: int, term: int) -> None:
        n = ir.nodes[child]
        if ir.nodes[term] == ("const", 0.0):
            return
        if n[0] in ("const", "zmask"):  # no gradient: a constant, the zoneout mask
            return
        if n[0] == "state":
            add(("carry", n[1]), p, term)
        elif n[0] == "vec":
            add(("dvec", n[1]), p, term)
        elif n[0] == "wx":
            add(("dgx", n[1]), p, term)
        elif n[0] == "ux":
            add(("dP", n[1]), p, term)
        elif n[0] == "xin":
            add(("dxe", "x"), p, term)
        elif n[0] == "mean":
            add(("dred", ir.reduction(child)), p, term)
        elif ir.pass_of[child] == p:
            inpass.setdefault(child, []).append(term)
        else:
            add(("xadj", child), p, term)

    def total(terms: list[int]) -> int:
        out = terms[0]
        for t in terms[1:]:
            out = ir.node("add", out, t)
        return out

    # Seeds: the gradient arriving on each new state from the loss and later steps.
    state_groups = {s: [g.index for g in ir.groups if ir.group_state(g) == s]
                    for s in ir.states}
    for p_index in range(len(ir.passes), 0, -1):
        ps = ir.passes[p_index - 1]
        # A product of round p_index (after this forward pass) hands its operand's
        # adjoint to this pass's backward as a load.
        for g in ir.groups:
            if g.round == p_index and ir.group_state(g) is None:
                inpass.setdefault(g.operand, []).append(ir.node("dop", g.index))
        # The values of the parameters alone are computed once per call, but their
        # gradients flow per step like any other's, in the pass that reads them.
        nodes = sorted(ps.forward + [i for i in ir.invariants if ir.pass_of[i] == p_index])
        for i in reversed(nodes):
            terms = list(inpass.get(i, []))
            if ("xadj", i) in contrib:
                terms.append(ir.node("xadj", i))
            if i in ir.reductions and ("dred", ir.reductions.index(i)) in contrib:
                terms.append(ir.node("radj", ir.reductions.index(i)))
            for s, node in ir.new_state.items():
                if node == i:
                    terms.append(ir.node("seed", s))
            if not terms:
                continue
            adj = total(terms)
            _propagate(ir, i, adj, lambda c, t, p=p_index: route(c, p, t))
    # Writes: per target, per pass one statement; the latest pass (run first) assigns.
    for target, items in contrib.items():
        passes = sorted({p for p, _ in items}, reverse=True)
        for k, p in enumerate(passes):
            node = total([t for q, t in items if q == p])
            ir.passes[p - 1].writes.append(Write(target[0], target[1], node, k > 0))
    ir.seeds = {}
    for s in ir.states:
        # The carried gradient: the loss's on the last state (dsT) at the last step,
        # then what the step after left on the previous state.
        loads = ([("dy",)] if s == "h" else []) + [("carry", s)]
        loads += [("dop", g) for g in state_groups[s]]
        ir.seeds[s] = loads
    # The backward nodes of each pass: everything its writes need, in id order (ids are
    # topological); forward values are resolved by _choose_slots.
    for ps in ir.passes:
        need: set[int] = set()
        for w in ps.writes:
            _reach(ir, w.node, need)
        ps.backward = sorted(need)


def _reach(ir: CellIR, i: int, out: set[int]) -> None:
    """Add node ``i`` and everything it reads to ``out``."""
    stack = [i]
    while stack:
        k = stack.pop()
        if k not in out:
            out.add(k)
            stack.extend(ir.children(k))


def _propagate(ir: CellIR, i: int, adj: int, route) -> None:
    """Hand node ``i``'s adjoint ``adj`` to its inputs (the chain rule, one node)."""
    n = ir.nodes[i]
    kind = n[0]
    N = ir.node
    if kind == "copy":
        route(n[1], adj)
    elif kind == "neg":
        route(n[1], N("neg", adj))
    elif kind == "add":
        route(n[1], adj)
        route(n[2], adj)
    elif kind == "sub":
        route(n[1], adj)
        route(n[2], N("neg", adj))
    elif kind == "mul":
        route(n[1], N("mul", adj, n[2]))
        route(n[2], N("mul", adj, n[1]))
    elif kind == "div":
        q = N("div", adj, n[2])
        route(n[1], q)
        route(n[2], N("neg", N("mul", q, i)))
    elif kind == "sigmoid":
        route(n[1], N("mul", adj, N("mul", i, N("sub", ir.const(1.0), i))))
    elif kind == "tanh":
        route(n[1], N("mul", adj, N("sub", ir.const(1.0), N("mul", i, i))))
    elif kind == "relu":
        route(n[1], N("mul", adj, N("step", i)))
    elif kind == "sqrt":
        route(n[1], N("div", N("mul", adj, ir.const(0.5)), i))
    else:  # pragma: no cover - every op kind is above
        raise AssertionError(kind)


# --------------------------------------------------------------------- slots
def _choose_slots(ir: CellIR) -> None:
    """The values a training forward keeps per step (see the module docstring).

    A forward value the backward reads is kept if it is a product result, a function's
    output (a gate: recomputing it costs an exponential), a state, or already kept;
    any other (sums, products of kept values) is recomputed in the backward pass from
    what it reads. Kept too: non-``h`` states (the next step's previous values),
    computed product operands (the weight gradient after the loop), and values one
    forward pass hands a later one, unless the later pass computes them again
    (:meth:`CellIR.recomputable`).
    """
    keep: list[int] = []

    def want(i: int) -> None:
        _keep(keep, i)

    for s in ir.states[1:]:
        want(ir.new_state[s])
    for g in ir.groups:
        if ir.group_state(g) is None:
            want(g.operand)
    for ps in ir.passes:
        for i in ps.forward:
            for c in ir.children(i):
                if (ir.is_op(c) and ir.pass_of[c] < ps.index and c not in ir.invariants
                        and not ir.recomputable(c)):
                    want(c)
    fwd = set(ir.pass_of)
    state_values = set(ir.new_state.values())
    for ps in ir.passes:
        expanded: list[int] = []
        seen: set[int] = set()
        for w in ps.writes:
            _resolve(ir, w.node, fwd, keep, state_values, seen, expanded)
        ps.backward = sorted(set(expanded))
    ir.slots = keep


def _keep(keep: list[int], i: int) -> None:
    if i not in keep:
        keep.append(i)


def _resolve(ir: CellIR, i: int, fwd: set[int], keep: list[int], state_values: set[int],
             seen: set[int], expanded: list[int]) -> None:
    """Add to a backward pass (``expanded``) what computing node ``i`` needs: a forward
    value is read from its slot (made here if it is a product result, a function's
    output or a state) or recomputed from what it reads."""
    if i in seen:
        return
    seen.add(i)
    n = ir.nodes[i]
    if i in ir.invariants:  # computed once per call
        return
    if i in fwd:
        if n[0] in ("const", "state", "vec", "xin", "zmask", "mean"):
            return  # (a mean is kept per row and step anyway)
        if n[0] in ("wx", "ux", "sigmoid", "tanh", "relu") or i in keep or i in state_values:
            _keep(keep, i)
            return
    for c in ir.children(i):
        _resolve(ir, c, fwd, keep, state_values, seen, expanded)
    if ir.is_op(i):
        expanded.append(i)


# ---------------------------------------------------------------------- printing
def _names(ir: CellIR) -> dict[int, str]:
    """Display names of the nodes an equation names (the last name wins for shared)."""
    out = dict(ir.labels)
    for name, i in ir.named.items():
        base = name[:-1] if name.endswith("'") else name
        out[i] = display_name(base) + ("'" if name.endswith("'") else "")
    return out


def _show(ir: CellIR, i: int, names: dict[int, str], temps: set[int], top: bool = True
          ) -> str:
    n = ir.nodes[i]
    kind = n[0]
    if not top and i in names:
        return names[i]
    if not top and i in temps:
        return f"t{i}"
    if kind == "const":
        v = n[1]
        return repr(int(v)) if v == int(v) else repr(v)
    if kind == "state":
        return n[1]
    if kind == "vec":
        return n[1]
    if kind == "wx":
        return f"({n[1]} x)"
    if kind == "xin":
        return "x"
    if kind == "zmask":
        return "m"
    if kind == "mean":
        return f"mean({_show(ir, n[1], names, temps, top=False)})"
    if kind == "radj":
        arg = _show(ir, ir.reductions[n[1]], names, temps, top=False)
        return f"∂mean({arg})↑/H"
    if kind == "ux":
        operand = ir.products[n[1]]
        return f"({n[1]} {_show(ir, operand, names, temps, top=False)})"
    if kind == "seed":
        return f"∂{n[1]}'"
    if kind == "xadj":
        return f"∂{names.get(n[1], f't{n[1]}')}↑"
    if kind == "dop":
        g = ir.groups[n[1]]
        return f"(∂P{g.index} U{g.index})"
    sub = [_show(ir, c, names, temps, top=False) for c in ir.children(i)]
    if kind in ("sigmoid", "tanh", "relu", "sqrt"):
        return f"{'σ' if kind == 'sigmoid' else kind}({sub[0]})"
    if kind == "step":
        return f"[{sub[0]} > 0]"
    if kind == "copy":
        return sub[0]
    if kind == "neg":
        return f"−{sub[0]}"
    sym = {"add": "+", "sub": "−", "mul": "⊙", "div": "/"}[kind]
    text = f"{sub[0]} {sym} {sub[1]}"
    return text if top else f"({text})"


def explain(ir: CellIR, backward: bool = False) -> list[str]:
    """The schedule as text: per pass the products before it and what it computes, and
    (``backward``) the derived gradient statements and where each goes."""
    names = _names(ir)
    out = []
    for ps in ir.passes:
        for g in ir.groups:
            if g.round == ps.index - 1:
                operand = _show(ir, g.operand, names, set(), top=False)
                out.append(f"product P{g.index} = [{', '.join(g.blocks)}] {operand}"
                           f" (one per step)")
        out.append(f"forward pass {ps.index}: computes"
                   f" {', '.join(names[i] for i in ps.forward if i in names) or '-'}")
    slots = [names.get(i, _show(ir, i, names, set(), top=True)) for i in ir.slots]
    out.append(f"kept per step for the backward pass: {', '.join(slots) or '-'}")
    if not backward:
        return out
    out.append("")
    out.append("backward (∂s' is the gradient arriving on a new state: the loss's and the"
               " later step's; ∂v↑ a value's gradient from a later pass):")
    for ps in reversed(ir.passes):
        out.append(f"backward pass {ps.index}:")
        temps = set(ps.backward)
        for i in ps.backward:
            out.append(f"  t{i} = {_show(ir, i, names, temps)}")
        for w in ps.writes:
            ref = _show(ir, w.node, names, temps, top=False)
            op = "+=" if w.accumulate or w.target == "carry" else "="
            if w.target == "dgx":
                dest = f"∂({w.name} x)"
            elif w.target == "dP":
                dest = f"∂({w.name} ·)"
            elif w.target == "dvec":
                dest = f"∂{w.name} (summed over steps and rows)"
            elif w.target == "xadj":
                dest = f"∂{names.get(w.name, f't{w.name}')}↑"
            elif w.target == "dxe":
                dest = "∂x (element-wise part)"
            elif w.target == "dred":
                arg = _show(ir, ir.reductions[w.name], names, temps, top=False)
                dest = f"∂mean({arg}) (summed over the units)"
            else:
                dest = f"∂{w.name} (previous step)"
            out.append(f"  {dest} {op} {ref}")
        for g in ir.groups:
            if g.round == ps.index - 1:
                out.append(f"  then ∂operand of P{g.index} = ∂P{g.index} U{g.index};"
                           f" ∂[{', '.join(g.blocks)}] = Σ_t ∂P{g.index}ᵀ operand after the loop")
    out.append("weight gradients: ∂W = Σ_t ∂(W x)ᵀ x, ∂x = ∂(W x) W, one product each after"
               " the loop")
    return out
