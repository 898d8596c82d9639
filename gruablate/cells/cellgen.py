"""Element-wise cell code, generated from a variant's switches.

The CPU and CUDA backends share the same per-element arithmetic; only the loops and
products around it differ. This module turns a :class:`KernelPlan` into short lists of
Python source lines, one statement per line, that read and write through a few names
the backend binds:

forward (one element ``j`` of one batch row ``bi`` at step ``t``)
    ``XP(k)``   input pre-activation of x-block ``k`` (the hoisted product ``x W^T``)
    ``HP(k)``   main recurrent pre-activation of h-block ``k`` (``h_{t-1} U^T``)
    ``CP``      candidate's recurrent product on ``r ⊙ h`` (reset before, second pass)
    ``B(k)``    bias segment ``k``
    ``HPREV``   ``h_{t-1}[j]``; ``CPREV`` ``c_{t-1}[j]`` (LSTM)
    ``G(k)``    gate/candidate value store for block ``k`` (kept for the backward pass)
    ``AUX``     the aux slot (``r ⊙ h``, ``U_c h + b_hc`` or ``c_t``)
    ``HOUT``, ``COUT`` the new state element

backward additionally reads ``DH`` (the total gradient on ``h_t[j]``), ``DC`` (on
``c_t[j]``, LSTM), ``DRH`` (gradient on ``(r ⊙ h)[j]`` from ``dĥ U_c``, second pass) and
writes ``DX(k)``, ``DHB(k)`` (pre-activation gradients feeding the input and recurrent
products), ``DCAND`` (candidate pre-activation gradient for the ``U_c`` product),
``DB(k) +=`` (bias), ``DHDIRECT`` (the part of ``dh_{t-1}`` that bypasses the products),
``DCPREV`` (LSTM ``dc_{t-1}``) and ``GPART`` (a scratch slot between the two passes).

Names are substituted by the backend with plain string templates, so each backend gets
straight-line code with no branching on the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import KernelPlan


@dataclass(frozen=True)
class CellCode:
    """Source lines of the forward and backward element-wise passes.

    ``fwd1``/``bwd1`` run first; ``fwd2``/``bwd2`` are empty unless the reset is placed
    before the recurrent product, in which case a product on ``r ⊙ h`` (forward) or on
    the candidate gradient (backward) runs between the two passes.
    """

    fwd1: list[str]
    fwd2: list[str]
    bwd1: list[str]
    bwd2: list[str]


def _act(kind: str, v: str) -> str:
    if kind == "tanh":
        return f"TANH({v})"
    if kind == "relu":
        return f"({v} if {v} > ZERO else ZERO)"
    return v


def _dact(kind: str, y: str) -> str:
    """Derivative of the activation written in terms of its output ``y``."""
    if kind == "tanh":
        return f"(ONE - {y} * {y})"
    if kind == "relu":
        return f"(ONE if {y} > ZERO else ZERO)"
    return "ONE"


def _pre(plan: KernelPlan, name: str, h_term: str | None = "default") -> str:
    """Pre-activation expression of block ``name`` (candidate's h-term overridable)."""
    block = next(b for b in plan.variant.blocks if b.name == name)
    terms = []
    if block.sees_x:
        terms.append(f"XP({plan.x_off[name]})")
    if block.sees_h:
        if h_term == "default":
            terms.append(f"HP({plan.h_off[name]})")
        elif h_term is not None:
            terms.append(h_term)
    if block.has_bias:
        terms.append(f"B({plan.b_off['b_' + name]})")
    return " + ".join(terms) if terms else "ZERO"


def _gate_grad_stores(plan: KernelPlan, name: str, dpre: str) -> list[str]:
    """Route a gate's pre-activation gradient to the products and the bias."""
    block = next(b for b in plan.variant.blocks if b.name == name)
    out = []
    if block.sees_x:
        out.append(f"DX({plan.x_off[name]}) = {dpre}")
    if block.sees_h:
        out.append(f"DHB({plan.h_off[name]}) = {dpre}")
    if block.has_bias:
        out.append(f"DB({plan.b_off['b_' + name]}) += {dpre}")
    return out


def generate(plan: KernelPlan) -> CellCode:
    family = plan.variant.family
    if family == "lstm":
        return _lstm(plan)
    return _gru(plan)


def _gru(plan: KernelPlan) -> CellCode:
    v = plan.variant
    act = v.candidate_activation
    gates = [g.name for g in v.gates]
    placement = v.reset_placement
    cand = v.candidate
    a = plan.a_off
    fwd1: list[str] = []
    fwd2: list[str] = []
    for g in gates:
        fwd1.append(f"g_{g} = SIGMOID({_pre(plan, g)})")
        fwd1.append(f"G({a[g]}) = g_{g}")
    rg = v.reset_gate
    if placement == "before":
        fwd1.append(f"AUX = g_{rg} * HPREV")
        # Pass two re-reads the gates from their store: locals do not survive the product.
        body = fwd2
        for g in gates:
            body.append(f"g_{g} = G({a[g]})")
        body.append(f"c_pre = {_pre(plan, 'c', h_term='CP')}")
    else:
        body = fwd1
        if placement == "after":
            hc = f"HP({plan.h_off['c']}) + B({plan.b_off['b_hc']})"
            body.append(f"hc = {hc}")
            body.append("AUX = hc")
            body.append(f"c_pre = {_pre(plan, 'c', h_term=None)} + g_r * hc")
        else:
            body.append(f"c_pre = {_pre(plan, 'c')}")
    body.append(f"c = {_act(act, 'c_pre')}")
    body.append(f"G({a['c']}) = c")
    body.append("h_prev = HPREV")
    if family_is_rnn(plan):
        body.append("HOUT = c")
    elif v.reset == "tied":
        body.append("HOUT = (ONE - g_f) * h_prev + g_f * c")
    elif v.update == "uncoupled":
        body.append("HOUT = g_u * h_prev + g_w * c")
    else:
        body.append("HOUT = g_u * h_prev + (ONE - g_u) * c")

    # ------------------------------------------------------------------ backward
    bwd1: list[str] = ["dh = DH", "h_prev = HPREV", f"c = G({a['c']})"]
    for g in gates:
        bwd1.append(f"g_{g} = G({a[g]})")
    if family_is_rnn(plan):
        bwd1.append("dcand = dh")
        bwd1.append("dh_direct = ZERO")
    elif v.reset == "tied":
        bwd1.append("dcand = dh * g_f")
        bwd1.append("dh_direct = dh * (ONE - g_f)")
        bwd1.append("dg_f = dh * (c - h_prev)")
    elif v.update == "uncoupled":
        bwd1.append("dcand = dh * g_w")
        bwd1.append("dh_direct = dh * g_u")
        bwd1.append("dg_u = dh * h_prev")
        bwd1.append("dg_w = dh * c")
    else:
        bwd1.append("dcand = dh * (ONE - g_u)")
        bwd1.append("dh_direct = dh * g_u")
        bwd1.append("dg_u = dh * (h_prev - c)")
    bwd1.append(f"dc_pre = dcand * {_dact(act, 'c')}")
    bwd1.append(f"DX({plan.x_off['c']}) = dc_pre")
    bwd1.append(f"DB({plan.b_off['b_c']}) += dc_pre")
    # Gates whose gradient is complete after pass one (all but the reset gate when the
    # reset is placed before the product: its gradient needs dĥ U_c first).
    late = {rg} if placement == "before" else set()
    if placement == "after":
        bwd1.append("hc = AUX")
        bwd1.append("dg_r = dc_pre * hc")
        bwd1.append("dhc = dc_pre * g_r")
        bwd1.append(f"DHB({plan.h_off['c']}) = dhc")
        bwd1.append(f"DB({plan.b_off['b_hc']}) += dhc")
    elif placement == "none" and cand.sees_h:
        bwd1.append(f"DHB({plan.h_off['c']}) = dc_pre")
    for g in gates:
        if g in late:
            continue
        bwd1.append(f"dp_{g} = dg_{g} * g_{g} * (ONE - g_{g})")
        bwd1.extend(_gate_grad_stores(plan, g, f"dp_{g}"))
    bwd2: list[str] = []
    if placement == "before":
        bwd1.append("DCAND = dc_pre")
        if v.reset == "tied":
            bwd1.append("GPART = dg_f")
        bwd1.append("DHDIRECT = dh_direct")
        bwd2.append("h_prev = HPREV")
        bwd2.append(f"g_{rg} = G({a[rg]})")
        bwd2.append("d_rh = DRH")
        reset_grad = "d_rh * h_prev"
        if v.reset == "tied":
            reset_grad = "GPART + d_rh * h_prev"
        bwd2.append(f"dg_{rg} = {reset_grad}")
        bwd2.append(f"dp_{rg} = dg_{rg} * g_{rg} * (ONE - g_{rg})")
        bwd2.extend(_gate_grad_stores(plan, rg, f"dp_{rg}"))
        bwd2.append(f"DHDIRECT = DHDIRECT + d_rh * g_{rg}")
    else:
        bwd1.append("DHDIRECT = dh_direct")
    return CellCode(fwd1, fwd2, bwd1, bwd2)


def family_is_rnn(plan: KernelPlan) -> bool:
    return plan.variant.family == "rnn"


def _lstm(plan: KernelPlan) -> CellCode:
    v = plan.variant
    act = v.candidate_activation
    a = plan.a_off
    cifg = v.coupled_input_forget
    fwd = []
    if not cifg:
        fwd.append(f"g_i = SIGMOID({_pre(plan, 'i')})")
        fwd.append(f"G({a['i']}) = g_i")
    fwd.append(f"g_f = SIGMOID({_pre(plan, 'f')})")
    fwd.append(f"G({a['f']}) = g_f")
    if cifg:
        fwd.append("g_i = ONE - g_f")
    fwd.append(f"g_o = SIGMOID({_pre(plan, 'o')})")
    fwd.append(f"G({a['o']}) = g_o")
    fwd.append(f"g_g = {_act(act, _pre(plan, 'g'))}")
    fwd.append(f"G({a['g']}) = g_g")
    fwd.append("cn = g_f * CPREV + g_i * g_g")
    fwd.append("AUX = cn")
    fwd.append("COUT = cn")
    fwd.append("HOUT = g_o * TANH(cn)")

    bwd = ["dh = DH", "c_prev = CPREV", "cn = AUX"]
    if not cifg:
        bwd.append(f"g_i = G({a['i']})")
    bwd.append(f"g_f = G({a['f']})")
    if cifg:
        bwd.append("g_i = ONE - g_f")
    bwd.append(f"g_o = G({a['o']})")
    bwd.append(f"g_g = G({a['g']})")
    bwd.append("tc = TANH(cn)")
    bwd.append("dg_o = dh * tc")
    bwd.append("dct = DC + dh * g_o * (ONE - tc * tc)")
    bwd.append("dg_f = dct * c_prev")
    bwd.append("dg_i = dct * g_g")
    bwd.append("dg_g = dct * g_i")
    if cifg:
        bwd.append("dg_f = dg_f - dg_i")  # i = 1 - f
    bwd.append("DCPREV = dct * g_f")
    gates = ["f", "o"] if cifg else ["i", "f", "o"]
    for g in gates:
        bwd.append(f"dp_{g} = dg_{g} * g_{g} * (ONE - g_{g})")
        bwd.extend(_gate_grad_stores(plan, g, f"dp_{g}"))
    bwd.append(f"dp_g = dg_g * {_dact(act, 'g_g')}")
    bwd.extend(_gate_grad_stores(plan, "g", "dp_g"))
    bwd.append("DHDIRECT = ZERO")
    return CellCode(fwd, [], bwd, [])
