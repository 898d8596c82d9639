"""The element-wise code of a cell, printed from its graph for any backend.

Every backend runs a cell's step the same way — products, then an element-wise pass,
then the products of the next round — and differs only in how it spells a loop and
where its arrays live. This module holds what is the same: which statements each
forward and backward pass runs, in what order, what each reads and where each
gradient goes, and the decisions taken from the graph alone (a group's product
gradient read from the input-product gradient where the nodes are equal, a vector
parameter's gradient read from a buffer the products already fill). A backend
subclasses :class:`CellPrinter` and says, in :meth:`CellPrinter.at`, how one element
of each array is spelled in its loops; every array a loop touches is asked for by a
node, never found by reading printed text back.

Locations (:meth:`CellPrinter.at`) name one element ``j`` of one row at one step:

reads
    ``("vec", k)`` vector parameter ``k``; ``("state", k, backward)`` state ``k`` before
    the step; ``("xin",)`` the input itself; ``("wx", k)`` the input product of ``W``
    block ``k``; ``("ux", g, q)`` block ``q`` of group ``g``'s product; ``("inv", k)``
    parameters-only value ``k``; ``("zmask",)`` the zoneout weight of the step's unit
    (``h' = m ⊙ h + (1 − m) ⊙ ...``); ``("slot", k, backward)`` slot ``k`` of the step's kept
    values; ``("dy",)``; ``("carry", k)`` the gradient carried onto state ``k``'s new
    value; ``("dq", g)`` group ``g``'s transposed product (its operand's gradient);
    ``("xadj", q)`` a value one backward pass hands an earlier one; ``("red", k,
    backward)`` reduction ``k``'s row mean (one number per row: the same for every
    ``j``); ``("radj", k)`` the gradient reduction ``k`` hands each unit of its argument;
writes
    ``("slot", k, False)``; ``("new", k)`` the new value of state ``k`` ≥ 1; ``("y",)``
    the new ``h`` (the output, and the ``h`` history the next step reads);
    and through :meth:`CellPrinter.reduce` and :meth:`CellPrinter.reduce_adjoint`, the
    sums over a row's units that reductions need (one per row, not per element);
    ``("dgx", k)``, ``("dP", g, q)``, ``("dbp", e)`` (a vector's gradient terms kept
    apart), ``("xadj", q)``, ``("dxe",)`` (dx's element-wise part), ``("dnext", k)``
    (the gradient on the previous value of state ``k``).
"""

from __future__ import annotations

from typing import Protocol

from .plan import KernelPlan

_OPS = {"add": "{} + {}", "sub": "{} - {}", "mul": "{} * {}", "div": "{} / {}"}


def constant(v: float) -> str:
    """A numeric constant in the generated modules' spelling (``DT`` is their dtype)."""
    if v == 1.0:
        return "ONE"
    if v == 0.0:
        return "ZERO"
    if v == 0.5:
        return "HALF"
    return f"DT({float(v)!r})"


class Loop(Protocol):
    """One element-wise loop being printed: its statements, one per line."""

    lines: list[str]


class CellPrinter:
    """The passes of one cell, printed through a backend's :meth:`at`."""

    def __init__(self, plan: KernelPlan) -> None:
        self.plan, self.ir = plan, plan.ir
        ir = self.ir
        self.group_of = {u: (g.index, q) for g in ir.groups for q, u in enumerate(g.blocks)}
        self.state_index = {s: k for k, s in enumerate(ir.states)}
        # Values handed between backward passes, one (rows, H) buffer each.
        self.xadj = sorted({w.name for ps in ir.passes for w in ps.writes
                            if w.target == "xadj"})
        self._single_writes()
        self._aliases()
        self._bias_sources()
        self.written = {(w.target, w.name) for ps in ir.passes for w in ps.writes}
        # States no pass writes a gradient onto: their carried gradient is zero.
        carried = {w.name for ps in ir.passes for w in ps.writes if w.target == "carry"}
        self.uncarried = [self.state_index[s] for s in ir.states if s not in carried]

    # ------------------------------------------------------------ to override
    def at(self, lp: Loop, loc: tuple) -> str:
        """One element of location ``loc`` (see the module docstring) in ``lp``."""
        raise NotImplementedError

    def function(self, kind: str, arg: str) -> str:
        """``sigmoid``, ``tanh`` or ``sqrt`` of ``arg``."""
        return f"{kind}({arg})"

    def reduce(self, lp: Loop, k: int, value: str) -> None:
        """Forward: add ``value`` (this unit's) to reduction ``k``'s sum over the row's
        units, whose mean the later passes read at ``("red", k, ...)``."""
        raise NotImplementedError

    def reduce_adjoint(self, lp: Loop, k: int, value: str, accumulate: bool) -> None:
        """Backward: add ``value`` (this unit's) to the sum over the row's units that
        becomes, divided by H, ``("radj", k)`` in an earlier pass (assigned, or added
        to what a later pass left there when ``accumulate``)."""
        raise NotImplementedError

    def invariant_read(self, lp: Loop, i: int) -> str:
        """A parameters-only value (by default computed once per call, then read)."""
        return self.at(lp, ("inv", self.ir.invariants.index(i)))

    # ---------------------------------------------------------- gradient buffers
    def _single_writes(self) -> None:
        """``(target, name) -> node`` for every gradient written by one statement."""
        writes = [w for ps in self.ir.passes for w in ps.writes]
        count: dict[tuple, int] = {}
        for w in writes:
            count[(w.target, w.name)] = count.get((w.target, w.name), 0) + 1
        self.single = {(w.target, w.name): w.node for w in writes
                       if count[(w.target, w.name)] == 1}

    def _aliases(self) -> None:
        """Groups whose product gradient is a run of the input-product gradient.

        Where ``W_k x`` and ``U_k h`` sit in one sum (``σ(W_i x + U_i h + b_i)``) their
        gradients are one node, so the group's ``dP`` is columns ``m..m+n`` of ``dgx``
        (every row of ``dgx`` is NX blocks wide): the backward stores it once, and the
        products read it there with ``dgx``'s row stride. Saves a (T, B, n·H) buffer
        written and read once per call.
        """
        ir, plan = self.ir, self.plan
        self.alias: dict[int, int] = {}
        by_node = {node: plan.w_index(name) for (target, name), node in self.single.items()
                   if target == "dgx"}
        for g in ir.groups:
            nodes = [self.single.get(("dP", u)) for u in g.blocks]
            if any(n is None or n not in by_node for n in nodes):
                continue
            cols = [by_node[n] for n in nodes]
            if cols == list(range(cols[0], cols[0] + len(cols))):
                self.alias[g.index] = cols[0]

    def _bias_sources(self) -> None:
        """Each vector parameter's gradient terms: read from a buffer the products
        already need when the pass writes the same node there once (a bias beside a
        ``W`` or ``U`` block: its gradient is that block's), else kept apart (``dbp``).

        ``vec_source[v]`` is ``("dgx", block)``, ``("dP", group, block)`` or
        ``("dbp", e)``; :attr:`apart` lists the vectors kept apart, in order."""
        ir = self.ir
        self.vec_source: dict[str, tuple] = {}
        apart: list[str] = []
        single = self.single
        by_node: dict[int, tuple[str, str]] = {}
        for target in ("dgx", "dP"):  # dgx first: an aliased dP lives there anyway
            for (t, name), node in single.items():
                if t == target:
                    by_node.setdefault(node, (target, name))
        for v in ir.vec_names:
            node = single.get(("dvec", v))
            if node is not None and node in by_node:
                target, name = by_node[node]
                if target == "dgx":
                    self.vec_source[v] = ("dgx", self.plan.w_index(name))
                else:
                    self.vec_source[v] = ("dP", *self.group_of[name])
            else:
                self.vec_source[v] = ("dbp", len(apart))
                apart.append(v)
        self.apart = apart

    def zero_filled(self, buffer: str, group: int | None = None) -> bool:
        """Whether ``buffer`` (``"dgx"``, ``"dP"`` of ``group``, ``"dbp"``) has a block no
        pass writes, so it must start as zeros (its gradient is zero)."""
        ir = self.ir
        if buffer == "dgx":
            return not all(("dgx", w) in self.written for w in ir.w_names)
        if buffer == "dP":
            return not all(("dP", u) in self.written for u in ir.groups[group].blocks)
        return not all(("dvec", v) in self.written for v in self.apart)

    # ---------------------------------------------------------- expressions
    def statement(self, lp: Loop, i: int, ref) -> None:
        """``v{i} = ...``: node ``i`` of the graph, its inputs spelled by ``ref``."""
        n = self.ir.nodes[i]
        kind = n[0]
        if kind in _OPS:
            text = _OPS[kind].format(ref(n[1]), ref(n[2]))
        elif kind == "neg":
            text = f"-{ref(n[1])}"
        elif kind == "copy":
            text = ref(n[1])
        elif kind == "relu":
            a = ref(n[1])
            text = f"{a} if {a} > ZERO else ZERO"
        elif kind == "step":
            text = f"ONE if {ref(n[1])} > ZERO else ZERO"
        else:  # sigmoid, tanh
            text = self.function(kind, ref(n[1]))
        lp.lines.append(f"v{i} = {text}")

    def leaf(self, lp: Loop, i: int, backward: bool) -> str | None:
        """The read of a leaf (a load) in a loop, or None for a computed value."""
        ir = self.ir
        n = ir.nodes[i]
        kind = n[0]
        if kind == "const":
            return constant(n[1])
        if kind == "vec":
            return self.at(lp, ("vec", self.plan.v_index(n[1])))
        if kind == "state":
            return self.at(lp, ("state", self.state_index[n[1]], backward))
        if kind == "xin":  # x itself (I = H, checked when the layer is made)
            return self.at(lp, ("xin",))
        if kind == "zmask":
            return self.at(lp, ("zmask",))
        if kind == "wx":
            return self.at(lp, ("wx", self.plan.w_index(n[1])))
        if kind == "ux":
            return self.at(lp, ("ux", *self.group_of[n[1]]))
        if kind == "seed":
            s = n[1]
            terms = []
            for load in ir.seeds[s]:
                if load[0] == "dy":
                    terms.append(self.at(lp, ("dy",)))
                elif load[0] == "carry":
                    terms.append(self.at(lp, ("carry", self.state_index[s])))
                else:
                    terms.append(self.at(lp, ("dq", load[1])))
            return "(" + " + ".join(terms) + ")"
        if kind == "xadj":
            return self.at(lp, ("xadj", self.xadj.index(n[1])))
        if kind == "dop":
            return self.at(lp, ("dq", n[1]))
        if kind == "mean":
            return self.at(lp, ("red", ir.reduction(i), backward))
        if kind == "radj":
            return self.at(lp, ("radj", n[1]))
        return None

    def slot_read(self, lp: Loop, i: int, backward: bool) -> str:
        return self.at(lp, ("slot", self.ir.slot(i), backward))

    # ---------------------------------------------------------- the passes
    def inference_slots(self) -> set[int]:
        """The slots inference writes too: values a later pass or product reads within
        the step (the rest are for the backward pass only)."""
        ir = self.ir
        out = {g.operand for g in ir.groups if ir.group_state(g) is None}
        for ps in ir.passes:
            for i in ps.forward:
                for c in ir.children(i):
                    if (c in ir.slots and ir.is_op(c) and ir.pass_of[c] < ps.index
                            and not ir.recomputable(c)):
                        out.add(c)
        return out

    def recomputed(self, index: int) -> list[int]:
        """The values of earlier passes forward pass ``index`` computes again rather
        than read from a slot (:meth:`CellIR.recomputable`), in the order they are
        computed."""
        ir = self.ir
        ps = ir.passes[index - 1]
        mine = set(ps.forward)
        out: set[int] = set()

        def need(c: int) -> None:
            if c in mine or c in out or not ir.is_op(c) or c in ir.invariants:
                return
            out.add(c)
            for g in ir.children(c):
                need(g)

        for i in ps.forward:
            for c in ir.children(i):
                if ir.is_op(c) and c not in mine and ir.recomputable(c):
                    need(c)
        return sorted(out)

    def forward_pass(self, lp: Loop, index: int, train: bool = True) -> None:
        """Forward pass ``index`` (from 1) into ``lp``: the new states, ``y``, and the
        slots (all of them in training, only those the step reads again if not)."""
        ir = self.ir
        ps = ir.passes[index - 1]
        again = self.recomputed(index)
        mine = set(ps.forward) | set(again)
        kept = set(ir.slots) if train else self.inference_slots()

        def ref(c: int) -> str:
            if c in mine:
                return f"v{c}"
            if c in ir.invariants:
                return self.invariant_read(lp, c)
            if ir.is_op(c):  # an earlier pass's value: kept in a slot
                return self.slot_read(lp, c, False)
            out = self.leaf(lp, c, backward=False)
            assert out is not None
            return out

        # Product results the backward reads are kept as they are, in their first pass.
        for i in ir.slots:
            if i in kept and not ir.is_op(i) and max(1, ir.pass_of[i]) == index:
                lp.lines.append(f"{self.slot_read(lp, i, False)} = {ref(i)}")
        for i in again:  # cheaper than a slot: computed again from what they read
            self.statement(lp, i, ref)
        for i in ps.forward:
            self.statement(lp, i, ref)
            if i in kept:
                lp.lines.append(f"{self.slot_read(lp, i, False)} = v{i}")
            if i in ir.reductions:
                self.reduce(lp, ir.reductions.index(i), f"v{i}")
            for s, node in ir.new_state.items():
                if node == i:
                    k = self.state_index[s]
                    # h' is the output: the next step reads it there.
                    where = ("y",) if k == 0 else ("new", k)
                    lp.lines.append(f"{self.at(lp, where)} = v{i}")

    def backward_pass(self, lp: Loop, index: int) -> None:
        """The derived statements of pass ``index`` into ``lp``, and their writes."""
        ir = self.ir
        ps = ir.passes[index - 1]
        mine = set(ps.backward)

        def ref(c: int) -> str:
            if c in mine:
                return f"v{c}"
            if c in ir.invariants:
                return self.invariant_read(lp, c)
            if c in ir.slots:
                return self.slot_read(lp, c, True)
            out = self.leaf(lp, c, backward=True)
            assert out is not None, ir.nodes[c]
            return out

        for i in ps.backward:
            self.statement(lp, i, ref)
        for w in ps.writes:
            value = ref(w.node)
            if w.target == "dvec" and self.vec_source[w.name][0] != "dbp":
                continue
            if w.target == "dred":
                self.reduce_adjoint(lp, int(w.name), value, w.accumulate)
                continue
            if w.target == "dgx":
                dest = self.at(lp, ("dgx", self.plan.w_index(w.name)))
            elif w.target == "dP":
                g, q = self.group_of[w.name]
                if g in self.alias:  # the same node is written to dgx
                    continue
                dest = self.at(lp, ("dP", g, q))
            elif w.target == "dvec":
                dest = self.at(lp, ("dbp", self.vec_source[w.name][1]))
            elif w.target == "xadj":
                dest = self.at(lp, ("xadj", self.xadj.index(w.name)))
            elif w.target == "dxe":  # added to dx after the loop
                dest = self.at(lp, ("dxe",))
            else:  # carry: the gradient on the previous state, for the step before
                dest = self.at(lp, ("dnext", self.state_index[w.name]))
            lp.lines.append(f"{dest} {'+=' if w.accumulate else '='} {value}")
