"""CUDA kernels printed from a cell's graph (:mod:`gruablate.cells.ir`): pure text.

Every variant is printed here, a switch spec through the graph of the equations it
renders. The shape is that of the fast RNN libraries (cuDNN, haste): one tiled product
(:mod:`.source`'s ``common`` module) for the input projections of all steps before the
loop; one *persistent* cooperative kernel that walks time, every block owning tiles of
(batch rows × hidden units); and after the backward one product per weight matrix and
a column sum per vector parameter. A step is the cell's passes
(:class:`~gruablate.cells.ir.Pass`): before pass ``p`` each tile computes the products
of the groups of round ``p − 1`` on its rows and columns (into ``pgb``, the step's
product results, read by whichever later pass needs them), then runs the pass's
element-wise statements; a grid-wide sync separates passes, because the next round's
products read whole rows. Backward, each step runs the passes last first; before pass
``p`` a tile forms the transposed products of round ``p`` (``dq = dP U``: the gradient
on a computed operand), and before the last pass those of round 0 from the step after
(the gradient the next step's products send back to the states). A row mean
(``mean``, ``ln``: :attr:`~gruablate.cells.ir.CellIR.reductions`) spans tiles too: the
pass computing its argument stores it in ``rdb``, and after that pass's grid sync one
thread per row and mean sums the row's units in order (the same bits every run) into
the row's ``acts``, with one more sync before the next pass reads it; backward, the
same for the sum of its readers' terms. A cell with neither recurrent products nor row means is a
scan: one thread per (row, unit).

The statements come from :class:`~gruablate.cells.irprint.CellPrinter`, the same as the
CPU backend's; this module says where each element lives on the device. Buffers
(flat, sizes in elements; ``BH = B·H``):

``ss``
    the states: ``h`` for steps 0..T (``ss[BH:(T+1)·BH]`` is ``y``), then each other
    state's steps 0..T in training, or two alternating steps in inference;
``zm``
    the zoneout weights (T, B, H) of a cell printed with zoneout (else unread);
``lens``
    each row's length (int64; or a single length for every row): past it a row's
    steps run no statement, its states carry over (``h`` too: the layer zeroes those
    outputs on the way out), its kept slots and product gradients are zero, and its
    carried gradient passes through;
``acts``
    the slots of every step (training) or of the current step (inference), each
    row's NA·H slot values followed by its NRD row means;
``rdb``
    (B, NRD, H) a pass's values to be summed over the units, then (B, NRD) the
    gradients the row means hand back (a 1-element array for a cell without);
``pgb``
    this step's product results, (B, NU·H); ``xp`` the input products (T, B, NX·H);
``dgx``, ``dP``, ``dbp``
    the gradients of the input products, of the products not read from ``dgx``, and
    the vector-parameter terms kept apart, per step; ``dq`` (groups, B, H) the
    transposed products; ``dcar`` (2, S, B, H) the carried state gradients, alternating;
    ``xab`` the values one backward pass hands an earlier one; ``dxe`` dx's
    element-wise part.
"""

from __future__ import annotations

from functools import cache

from ...cells.irprint import CellPrinter
from ...cells.plan import KernelPlan, make_plan
from ...cells.spec import Variant
from ...vocabulary import DTYPES
from .source import (
    _INT_ARGS,
    DEFAULT_GEOMETRY,
    Geometry,
    _Code,
    _header,
    _launch_bounds,
    _product,
    _scan_head,
    _tile_loop,
    _tile_workspace,
    signatures,
)

FORWARD_ARGS = ("T", "B", "H", "keep", "xp", "b", "UT", "ss", "acts", "pgb", "x", "lens",
                "zm", "rdb")
BACKWARD_ARGS = ("T", "B", "H", "U", "b", "ss", "acts", "x", "dy", "dgx", "dP", "dbp",
                 "xab", "dq", "dcar", "dxe", "ds0", "lens", "zm", "rdb")
ARGS = {"forward": FORWARD_ARGS, "backward": BACKWARD_ARGS}
CELL_KERNELS = tuple(ARGS)


def cell_signatures(dtype: str) -> dict[str, tuple]:
    """The argument types of the printed ``forward`` and ``backward``."""
    return signatures(dtype, ARGS, _INT_ARGS | {"keep"}, frozenset({"lens"}))


class _Lines:
    """One element-wise pass being printed: its lines, and the parameters-only values
    already computed in it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done: set[int] = set()


class CudaCellPrinter(CellPrinter):
    """Where each location of :mod:`~gruablate.cells.irprint` lives in the kernels."""

    def __init__(self, plan: KernelPlan) -> None:
        super().__init__(plan)
        ir = self.ir
        #: each group's first block in ``pgb`` and ``U``
        self.offset = {g.index: plan.group_offset(g.index) for g in ir.groups}
        #: each group's first block in ``dP`` (groups read from dgx have none)
        self.dp_offset: dict[int, int] = {}
        n = 0
        for g in ir.groups:
            if g.index not in self.alias:
                self.dp_offset[g.index] = n
                n += len(g.blocks)
        self.dp_blocks = n

    # ------------------------------------------------------------ locations
    def at(self, lp: _Lines, loc: tuple) -> str:  # type: ignore[override]
        kind = loc[0]
        if kind == "vec":
            return f"b[{loc[1]} * H + j]"
        if kind == "y":  # the new h: step t + 1 of its history
            return "ss[hrow + BH + j]"
        if kind in ("state", "new"):
            k = loc[1]
            if k == 0:
                return "ss[hrow + j]"
            if kind == "state" and loc[2]:  # backward: every step is kept
                return f"ss[HS * {k} + hrow + j]"
            step = "tc" if kind == "state" else "tn"
            return f"ss[HS + ({k - 1} * TS + {step}) * BH + srow + j]"
        if kind == "xin":
            return "x[hrow + j]"
        if kind == "zmask":
            return "zm[hrow + j]"
        if kind == "wx":
            return f"xp[xrow + {loc[1]} * H + j]"
        if kind == "ux":
            return f"pgb[prow + {self.offset[loc[1]] + loc[2]} * H + j]"
        if kind == "slot":
            return f"acts[arow + {loc[1]} * H + j]"
        if kind == "dy":
            return "dy[hrow + j]"
        if kind in ("carry", "dnext"):
            step = "tcur" if kind == "carry" else "tnxt"
            return f"dcar[({step} * S + {loc[1]}) * BH + srow + j]"
        if kind == "dq":
            return f"dq[{loc[1]} * BH + srow + j]"
        if kind == "xadj":
            return f"xab[{loc[1]} * BH + srow + j]"
        if kind == "dgx":
            return f"dgx[xrow + {loc[1]} * H + j]"
        if kind == "dP":
            g, q = loc[1], loc[2]
            n = len(self.ir.groups[g].blocks)
            return f"dP[{self.dp_offset[g]} * TBH + hrow * {n} + {q} * H + j]"
        if kind == "dbp":
            return f"dbp[erow + {loc[1]} * H + j]"
        if kind == "dxe":
            return "dxe[hrow + j]"
        if kind == "red":
            return f"acts[arow + NA * H + {loc[1]}]"
        if kind == "radj":
            return f"rdb[B * NRD * H + bi * NRD + {loc[1]}]"
        raise AssertionError(loc)  # "inv" is computed inline (invariant_read)

    def function(self, kind: str, arg: str) -> str:
        # Written out, not a device function: numba-cuda compiles a device function
        # for the GPU it finds, so calling one would fail compile_ptx without a GPU.
        if kind == "sigmoid":
            return f"ONE / (ONE + math.exp(-{arg}))"
        return f"math.{kind}({arg})"

    def reduce(self, lp: _Lines, k: int, value: str) -> None:  # type: ignore[override]
        lp.lines.append(f"rdb[(bi * NRD + {k}) * H + j] = {value}")

    def reduce_adjoint(self, lp: _Lines, k: int, value: str,  # type: ignore[override]
                       accumulate: bool) -> None:
        lp.lines.append(f"rdb[(bi * NRD + {k}) * H + j] = {value}")

    def row_sums(self, index: int, backward: bool) -> list[str]:
        """After pass ``index`` (and its grid sync): one thread per row and row mean
        sums, over the row's units in order, what the pass stored for the mean (forward)
        or for its gradient (backward), within the row's length; [] if there is none."""
        ir = self.ir
        if backward:
            todo = [(int(w.name), w.accumulate) for w in ir.passes[index - 1].writes
                    if w.target == "dred"]
        else:
            todo = [(k, False) for k, a in enumerate(ir.reductions)
                    if ir.pass_of[a] == index]
        if not todo:
            return []
        n = len(todo)
        out = [f"for q_r in range(q_gid, B * {n}, q_gsz):", f"    bi = q_r // {n}",
               "    arow = (t * B + bi) * NAH" if backward else
               "    arow = (keep * t * B + bi) * NAH",
               f"    within = t < {_LENGTH}"]
        for q, (k, accumulate) in enumerate(todo):
            dest = self.at(None, ("radj" if backward else "red", k, backward))
            out += [f"    {'if' if q == 0 else 'elif'} q_r % {n} == {q}:",
                    "        q_s = ZERO", "        if within:", "            for q_j in range(H):",
                    f"                q_s += rdb[(bi * NRD + {k}) * H + q_j]"]
            if backward:
                op = "+=" if accumulate else "="
                out.append(f"            {dest} {op} q_s / DT(H)")
            else:
                out.append(f"        {dest} = q_s / DT(H)")
        return out

    def invariant_read(self, lp: _Lines, i: int) -> str:  # type: ignore[override]
        """Parameters-only values are computed where they are read: a few operations
        per element, cheaper on a GPU than a buffer and a launch."""
        ir = self.ir
        if i not in lp.done:
            lp.done.add(i)

            def ref(c: int) -> str:
                if c in ir.invariants:
                    return self.invariant_read(lp, c)
                out = self.leaf(lp, c, backward=False)
                assert out is not None
                return out

            self.statement(lp, i, ref)
        return f"v{i}"

    def forward_lines(self, index: int) -> list[str]:
        """Pass ``index``'s statements for the thread's (t, bi, j), run only within the
        row's length; after the last pass, the padding's carry."""
        lp = _Lines()
        self.forward_pass(lp, index)
        out = _within_length(lp)
        if index == len(self.ir.passes):
            out += ["else:  # past the row's length: the states carry over",
                    f"    {self.at(lp, ('y',))} = {self.at(lp, ('state', 0, False))}"]
            out += [f"    {self.at(lp, ('new', k))} = {self.at(lp, ('state', k, False))}"
                    for k in range(1, len(self.ir.states))]
            out += ["    for q_a in range(NA):", "        acts[arow + q_a * H + j] = ZERO"]
        return out

    def backward_lines(self, index: int) -> list[str]:
        """Pass ``index``'s derived statements within the row's length; before the last
        pass (the first to run), the padding's: the carried gradient passes through,
        and the step's product and vector gradients are zero."""
        lp = _Lines()
        self.backward_pass(lp, index)
        out = _within_length(lp)
        if index == len(self.ir.passes):
            out += ["else:  # past the row's length"]
            out += [f"    {self.at(lp, ('dnext', k))} = {self.at(lp, ('carry', k))}"
                    for k in range(len(self.ir.states))]
            out += ["    for q_a in range(NX):", "        dgx[xrow + q_a * H + j] = ZERO",
                    "    for q_a in range(NE):", "        dbp[erow + q_a * H + j] = ZERO"]
            for g in self.ir.groups:
                if g.index not in self.alias:
                    for q in range(len(g.blocks)):
                        out.append(f"    {self.at(lp, ('dP', g.index, q))} = ZERO")
        return out

    # ------------------------------------------------------------ products
    def product_source(self, g: int, backward: bool, step: str) -> tuple[str, str, str]:
        """``(array, offset, row stride)`` of group ``g``'s product operand: forward its
        operand at step ``t``, backward its product gradient at step ``step``."""
        ir = self.ir
        group = ir.groups[g]
        if backward:
            if g in self.alias:
                return "dgx", f"{step} * B * NXH + {self.alias[g]} * H", "NXH"
            n = len(group.blocks)
            return "dP", f"{self.dp_offset[g]} * TBH + {step} * B * {n} * H", f"{n} * H"
        s = ir.group_state(group)
        if s is None:
            return "acts", f"keep * t * B * NAH + {ir.slot(group.operand)} * H", "NAH"
        k = self.state_index[s]
        if k == 0:
            return "ss", "t * BH", "H"
        return "ss", f"HS + ({k - 1} * TS + tc) * BH", "H"


_GUARD = " and bi < B and j < H"
#: The thread's row's length: ``lens`` holds one per row, or one for every row (a
#: single unbounded length: every row runs every step, and no step uploads it).
_LENGTH = "lens[min(bi, lens.shape[0] - 1)]"


def _within_length(lp: _Lines) -> list[str]:
    """A pass's lines, run only at the steps within the thread's row's length."""
    return [f"if t < {_LENGTH}:", *("    " + line for line in lp.lines)]


def _consts(pr: CudaCellPrinter, geo: Geometry) -> list[str]:
    ir, plan = pr.ir, pr.plan
    g = max([len(x.blocks) for x in ir.groups] + [1])
    return [
        f"NX = {plan.nx}  # W blocks",
        f"NU = {plan.nu}  # U blocks, by group",
        f"NA = {plan.na}  # slots kept per step",
        f"NRD = {plan.nrd}  # row means kept per step, after the slots",
        f"NE = {len(pr.apart)}  # vector parameters whose gradient terms are kept apart",
        f"S = {plan.n_states}  # states",
        # Shared and local array shapes must be literal constants for numba.
        f"PART_N = {geo.nw * geo.bm * geo.tile_cols}",
        f"ACC_N = {geo.bm * g * geo.jc}",
        f"YK_N = {geo.ku * g * geo.jc}",
        f"XK_N = {geo.ku * geo.bm}",
    ]


def _prelude(c: _Code, recurrent: bool) -> None:
    c("BH = B * H", "HS = (T + 1) * BH", "TBH = T * BH", "NXH = NX * H", "NUH = NU * H",
      "NAH = NA * H + NRD", "NEH = NE * H")
    if recurrent:
        _tile_workspace(c)
        c("q_gid = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x",
          "q_gsz = cuda.gridDim.x * cuda.blockDim.x")


def _rows(c: _Code, backward: bool) -> None:
    """Row bases of the thread's (t, bi) in the flat buffers (keep is 0 or 1:
    arithmetic instead of branches keeps the kernel's control flow small)."""
    c("hrow = (t * B + bi) * H", "xrow = (t * B + bi) * NXH", "srow = bi * H")
    if backward:
        c("arow = (t * B + bi) * NAH", "erow = (t * B + bi) * NEH")
    else:
        c("arow = (keep * t * B + bi) * NAH", "prow = bi * NUH")


def _steps(c: _Code, backward: bool) -> None:
    """Which buffer holds this step's values: every step is kept in training, two
    alternate in inference; the carried gradients alternate."""
    if backward:
        c("tcur = (t + 2) % 2  # the carried gradient on this step's new states",
          "tnxt = (t + 1) % 2  # ... and on its previous ones, for the step before")
    else:
        c("tc = keep * t + (1 - keep) * (t % 2)",
          "tn = keep * (t + 1) + (1 - keep) * ((t + 1) % 2)")


def _dq_product(c: _Code, pr: CudaCellPrinter, g: int, step: str) -> None:
    """Group ``g``'s transposed product at step ``step`` into ``dq``: dP U_g."""
    a, off, ld = pr.product_source(g, True, step)
    n = len(pr.ir.groups[g].blocks)
    _product(c, 1, a, off, ld, "U", f"{pr.offset[g]} * H * H", "H", f"{n} * H",
             store=f"dq[{g} * BH + bi * H + j]", guard=_GUARD)


@cache
def cell_source(variant: Variant, dtype: str, geo: Geometry = DEFAULT_GEOMETRY,
                zoneout: bool = False) -> str:
    """Module text of the ``forward`` and ``backward`` kernels of ``variant``'s cell."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    plan = make_plan(variant, zoneout)
    pr = CudaCellPrinter(plan)
    ir = pr.ir
    recurrent = not ir.is_scan
    n_passes = len(ir.passes)
    c = _Code()
    c(*_header("cell", "the equations of a cell", dtype, geo,
               source="gruablate.backends.cuda.cell_source"), "HALF = DT(0.5)")
    c(*_consts(pr, geo))
    _launch_bounds(c, recurrent)
    guard = f"q_w < BMC{_GUARD}"

    # ------------------------------------------------------------------ forward
    c("", "", "@cuda.jit(cache=True, **BOUNDS)", f"def forward({', '.join(FORWARD_ARGS)}):")
    c.indent()
    c('"""Forward over T steps: the states into ss, the slots into acts (every step\'s',
      'when keep is 1, the current step\'s when it is 0)."""')
    _prelude(c, recurrent)
    c("TS = 2 + keep * (T - 1)  # steps kept of the states other than h")
    if not recurrent:
        # A scan: nothing crosses hidden units, so one thread per (bi, j) walks the
        # sequence, every pass in turn.
        _scan_head(c, False)
        _steps(c, False)
        _rows(c, False)
        for p in range(1, n_passes + 1):
            c(*pr.forward_lines(p))
        c.dedent()
        c.dedent()
    else:
        c("for t in range(T):")
        c.indent()
        _steps(c, False)
        for p in range(1, n_passes + 1):
            _tile_loop(c)
            for g in ir.groups:
                if g.round == p - 1:
                    a, off, ld = pr.product_source(g.index, False, "t")
                    _product(c, len(g.blocks), a, off, ld, "UT", f"{pr.offset[g.index]} * H",
                             "NUH", "H", store=f"pgb[(bi * NU + {pr.offset[g.index]} + q_g)"
                             " * H + j]", guard=_GUARD)
            c(f"if {guard}:")
            c.indent()
            _rows(c, False)
            c(*pr.forward_lines(p))
            c.dedent()
            c("cuda.syncthreads()  # part is reused by the next tile")
            c.dedent()
            c(f"grid.sync()  # pass {p} complete: the next products read whole rows")
            sums = pr.row_sums(p, backward=False)
            if sums:
                c(*sums)
                c(f"grid.sync()  # the row means of pass {p} are in acts")
        c.dedent()
    c.dedent()

    # ------------------------------------------------------------------ backward
    c("", "", "@cuda.jit(cache=True, **BOUNDS)", f"def backward({', '.join(BACKWARD_ARGS)}):")
    c.indent()
    c('"""Backward through time: the gradients of every step\'s products (dgx, dP) and',
      "vector terms (dbp) for the weight gradients after the loop, the state gradient",
      'into ds0. dcar arrives holding the gradient on the last state at step T - 1."""')
    _prelude(c, recurrent)
    zero = [f"dcar[(tnxt * S + {k}) * BH + srow + j] = ZERO  # no pass writes it"
            for k in pr.uncarried]
    state_groups = {k: [g.index for g in ir.groups if ir.group_state(g) == s]
                    for k, s in enumerate(ir.states)}

    def ds0(indent_first: bool = False) -> None:
        for k in range(plan.n_states):
            terms = [f"dcar[(tcur * S + {k}) * BH + srow + j]"]
            terms += [f"dq[{g} * BH + srow + j]" for g in state_groups[k]]
            c(f"ds0[{k} * BH + srow + j] = {' + '.join(terms)}")

    if not recurrent:
        _scan_head(c, True)
        _steps(c, True)
        _rows(c, True)
        c(*zero)
        for p in range(n_passes, 0, -1):
            c(*pr.backward_lines(p))
        c.dedent()
        c("t = -1", "srow = bi * H")
        _steps(c, True)
        ds0()
        c.dedent()
        c.dedent()
        return c.text()
    # Step t's last pass first forms dq for the groups on the states, from the step
    # after (dP_{t+1} U: a product over whole rows, hence the grid sync closing each
    # pass); the extra step t = -1 forms them from step 0, for ds0.
    c("for t in range(T - 1, -2, -1):")
    c.indent()
    _steps(c, True)
    _tile_loop(c)
    rounds0 = [g.index for g in ir.groups if g.round == 0]
    if rounds0:  # (a cell may multiply only computed values: U_c (r ⊙ h))
        c("if t + 1 < T:")
        c.indent()
        for g in rounds0:
            _dq_product(c, pr, g, "(t + 1)")
        c.dedent()
        c(f"elif {guard}:  # nothing comes back from after the last step")
        for g in rounds0:
            c(f"    dq[{g} * BH + bi * H + j] = ZERO")
    for g in ir.groups:
        if g.round == n_passes:  # pragma: no cover - a product no pass reads
            raise AssertionError("a product after the last pass")
    c(f"if {guard}:")
    c.indent()
    c("if t >= 0:")
    c.indent()
    _rows(c, True)
    c(*zero)
    c(*pr.backward_lines(n_passes))
    c.dedent()
    c("else:")
    c.indent()
    c("srow = bi * H")
    ds0()
    c.dedent()
    c.dedent()
    c("cuda.syncthreads()")
    c.dedent()
    c(f"grid.sync()  # pass {n_passes} complete")
    sums = pr.row_sums(n_passes, backward=True)
    if sums:  # (no pass runs at t = -1)
        c("if t >= 0:", *("    " + line for line in sums))
        c("grid.sync()  # the row means' gradients are in rdb")
    if n_passes > 1:
        c("if t >= 0:")
        c.indent()
        for p in range(n_passes - 1, 0, -1):
            _tile_loop(c)
            for g in ir.groups:
                if g.round == p:
                    _dq_product(c, pr, g.index, "t")
            c(f"if {guard}:")
            c.indent()
            _rows(c, True)
            c(*pr.backward_lines(p))
            c.dedent()
            c("cuda.syncthreads()")
            c.dedent()
            c(f"grid.sync()  # pass {p} complete")
            sums = pr.row_sums(p, backward=True)
            if sums:
                c(*sums)
                c("grid.sync()  # the row means' gradients are in rdb")
        c.dedent()
    c.dedent()
    c.dedent()
    return c.text()
