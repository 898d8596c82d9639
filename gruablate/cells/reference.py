"""The float64 NumPy oracle: every cell of ``VARIANTS.md``, written out by hand.

This module is the slow, obvious answer the compiled kernels are tested against. It is
written straight from the equations of ``VARIANTS.md`` and reads only the variant's
switches (``family``, ``reset``, ``update``, ``gate_inputs``, ``candidate_inputs``,
``candidate_activation``, ``coupled_input_forget``), never the kernels or the packing.
There is one small step function per family and a plain Python loop over time. A cell
written as equations is run by :func:`interpret`, which evaluates the parsed equations
with NumPy as they read: it shares the parser with the kernels, nothing else (no graph,
no schedule, no derivative, no generated code).

Conventions (see ``VARIANTS.md``):

- ``x_t`` has one row per batch element, so ``W x`` is written ``x_t @ W.T``.
- The GRU update gate ``u`` is a *keep* gate: ``h' = u ⊙ h + (1 − u) ⊙ ĥ``.
- The MGU's single gate ``f`` (``reset = "tied"``) writes and resets:
  ``ĥ = act(W_c x + U_c (f ⊙ h) + b_c)``, ``h' = (1 − f) ⊙ h + f ⊙ ĥ``.
- A gate ``g`` has ``W_g`` iff ``gate_inputs`` contains ``x``, ``U_g`` iff it contains
  ``h``, ``b_g`` iff it contains ``b``.

It must never import the compiled kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

State = np.ndarray | tuple[np.ndarray, np.ndarray]


def sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic sigmoid ``σ(a) = 1 / (1 + exp(−a))``."""
    return 1.0 / (1.0 + np.exp(-a))


def activation(name: str, a: np.ndarray) -> np.ndarray:
    """The candidate activation: ``tanh``, ``relu`` or ``identity``."""
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0.0)
    if name == "identity":
        return a
    raise ValueError(f"unknown candidate activation {name!r}")


def _p(params: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """One parameter, as float64."""
    return np.asarray(params[key], dtype=np.float64)


def gate(
    variant: Any, params: Mapping[str, np.ndarray], name: str, x: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """A sigmoid gate ``σ(W_g x + U_g h + b_g)``, each term present per ``gate_inputs``.

    With ``gate_inputs = "b"`` the gate is the constant ``σ(b_g)``; with ``"h"`` it is
    ``σ(U_g h)`` (no bias); with ``"xb"`` it is ``σ(W_g x + b_g)`` (no state).
    """
    pre = np.zeros_like(h)
    if "x" in variant.gate_inputs:
        pre = pre + x @ _p(params, f"W_{name}").T
    if "h" in variant.gate_inputs:
        pre = pre + h @ _p(params, f"U_{name}").T
    if "b" in variant.gate_inputs:
        pre = pre + _p(params, f"b_{name}")
    return sigmoid(pre)


def candidate(
    variant: Any, params: Mapping[str, np.ndarray], name: str, x: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """The candidate ``act(W x + U h + b)``; the ``U h`` term only for ``candidate_inputs = "xh"``.

    ``h`` is whatever the candidate sees: the state, or the reset state ``r ⊙ h``.
    """
    pre = x @ _p(params, f"W_{name}").T + _p(params, f"b_{name}")
    if variant.candidate_inputs == "xh":
        pre = pre + h @ _p(params, f"U_{name}").T
    return activation(variant.candidate_activation, pre)


def gru_step(
    variant: Any, params: Mapping[str, np.ndarray], x: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """One step of the GRU family: returns ``h'`` from ``x_t`` (B, I) and ``h`` (B, H)."""
    if variant.reset == "tied":  # MGU: one write gate f that also resets
        f = gate(variant, params, "f", x, h)
        h_hat = candidate(variant, params, "c", x, f * h)
        return (1.0 - f) * h + f * h_hat

    u = gate(variant, params, "u", x, h)  # keep gate
    if variant.reset == "before":
        r = gate(variant, params, "r", x, h)
        h_hat = candidate(variant, params, "c", x, r * h)
    elif variant.reset == "after":
        r = gate(variant, params, "r", x, h)
        pre = (
            x @ _p(params, "W_c").T
            + _p(params, "b_c")
            + r * (h @ _p(params, "U_c").T + _p(params, "b_hc"))
        )
        h_hat = activation(variant.candidate_activation, pre)
    elif variant.reset == "none":
        h_hat = candidate(variant, params, "c", x, h)
    else:
        raise ValueError(f"unknown reset {variant.reset!r}")

    if variant.update == "uncoupled":
        w = gate(variant, params, "w", x, h)  # independent write gate
        return u * h + w * h_hat
    if variant.update == "coupled":
        return u * h + (1.0 - u) * h_hat
    raise ValueError(f"unknown update {variant.update!r}")


def lstm_step(
    variant: Any,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the LSTM family: returns ``(h', c')``."""
    f = gate(variant, params, "f", x, h)
    # CIFG couples the input gate to the forget gate: i = 1 − f.
    i = (1.0 - f) if variant.coupled_input_forget else gate(variant, params, "i", x, h)
    o = gate(variant, params, "o", x, h)
    g = candidate(variant, params, "g", x, h)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new


def rnn_step(
    variant: Any, params: Mapping[str, np.ndarray], x: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """One step of the plain RNN: ``h' = act(W_c x + U_c h + b_c)``."""
    return candidate(variant, params, "c", x, h)


def forward(
    variant: Any,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    state: State | None = None,
) -> tuple[np.ndarray, State]:
    """Run the cell over a sequence in float64.

    ``x`` is (T, B, I). Returns ``y`` (T, B, H), every ``h_t``, and the last state.
    The state is an (B, H) array ``h`` for the GRU family and ``rnn``, a tuple ``(h, c)``
    for the LSTM family; ``None`` means zeros. The last state has the same form.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must be (T, B, I), got shape {x.shape}")
    T, B, _ = x.shape
    if variant.family == "equations":
        names = list(variant.state_names)
        H = next(_p(params, k).shape[0] for k in params)
        if state is None:
            parts = [np.zeros((B, H)) for _ in names]
        else:
            parts = list(state) if len(names) > 1 else [state]
        y, last = interpret(variant.cell_equations, params, x,
                            dict(zip(names, (np.array(a, dtype=np.float64) for a in parts),
                                     strict=True)))
        out = tuple(last[n] for n in names)
        return y, (out if len(names) > 1 else out[0])
    cand = "g" if variant.family == "lstm" else "c"
    H = _p(params, f"W_{cand}").shape[0]  # every candidate sees the input

    if variant.family == "lstm":
        if state is None:
            h, c = np.zeros((B, H)), np.zeros((B, H))
        else:
            h, c = (np.array(s, dtype=np.float64) for s in state)
    elif variant.family in ("gru", "rnn"):
        h = np.zeros((B, H)) if state is None else np.array(state, dtype=np.float64)
    else:
        raise ValueError(f"unknown family {variant.family!r}")

    y = np.empty((T, B, H))
    for t in range(T):
        if variant.family == "gru":
            h = gru_step(variant, params, x[t], h)
        elif variant.family == "lstm":
            h, c = lstm_step(variant, params, x[t], h, c)
        else:
            h = rnn_step(variant, params, x[t], h)
        y[t] = h

    if variant.family == "lstm":
        return y, (h, c)
    return y, h


_FUNCTIONS = {"sigmoid": sigmoid, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0.0),
              "identity": lambda v: v, "sqrt": np.sqrt}


def interpret(equations: Any, params: Mapping[str, np.ndarray], x: np.ndarray,
              state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run a cell's equations over ``x`` (T, B, I) from ``state`` (name -> (B, H)):
    ``(y, last state)``. Each step evaluates the equations in order, an unprimed state
    name reading the previous step's value, a primed one this step's."""
    from .notation import FUNCTIONS, LN_EPSILON, parse_equation

    parsed = [parse_equation(e) for e in equations]
    P = {k: _p(params, k) for k in params}
    state = dict(state)
    ys = []
    for t in range(x.shape[0]):
        env: dict[str, np.ndarray] = {}

        def ev(n: tuple, xt: np.ndarray = x[t], env: dict = env, prev: dict = state) -> Any:
            kind = n[0]
            if kind == "num":
                return n[1]
            if kind == "var":
                name, primed = n[1], n[2]
                if primed:
                    return env[name + "'"]
                if name == "x":
                    return xt
                if name in P:
                    return P[name]
                return env[name] if name in env else prev[name]
            if kind == "call":
                fn = FUNCTIONS[n[1]]
                args = [ev(a) for a in n[2:]]
                if fn in ("mean", "ln"):  # over the units of the blocks side by side
                    whole = np.concatenate(np.broadcast_arrays(*args), axis=-1)
                    mean = whole.mean(axis=-1, keepdims=True)
                    if fn == "mean":
                        return mean
                    return (args[0] - mean) / np.sqrt(whole.var(axis=-1, keepdims=True)
                                                      + LN_EPSILON)
                return _FUNCTIONS[fn](args[0])
            if kind == "mat":  # W_k x or U_k (operand): x_t @ W.T
                return ev(n[2]) @ P[n[1]].T
            if kind == "neg":
                return -ev(n[1])
            a, b = ev(n[1]), ev(n[2])
            return {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                    "div": np.divide}[kind](a, b)

        for eq in parsed:
            env[eq.target + ("'" if eq.primed else "")] = ev(eq.expr)
        state = {s: env[s + "'"] for s in state}
        ys.append(state["h"])
    return np.stack(ys), state
