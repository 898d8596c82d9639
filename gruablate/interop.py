"""Weights between PyTorch and gruablate: ``nn.GRU`` ↔ ``gru_reset_after``, ``nn.LSTM`` ↔ ``lstm``.

One layer and direction maps to one :class:`RecurrentLayer` (:func:`from_torch`,
:func:`to_torch`); a module of any depth, either direction, to a list per layer of one
layer per direction, forward first (:func:`stack_from_torch`, :func:`stack_to_torch`).

PyTorch stacks its gates as (r, z, n) for the GRU and (i, f, g, o) for the LSTM and
keeps two bias vectors (input and recurrent). Its GRU ``z`` is gruablate's keep gate
``u`` (``h' = (1 − z) ⊙ n + z ⊙ h``), so no sign flips are needed. Where gruablate has
one bias per gate the two PyTorch biases add up (``b_r = b_ir + b_hr``); the GRU's
``b_hn`` sits inside the reset product and maps to ``b_hc``. Going back, the summed
bias goes to ``bias_ih`` and ``bias_hh`` holds zeros (and ``b_hc``): the same function.

torch is an optional dependency, imported only here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layer import RecurrentLayer

_GRU_ORDER = ("r", "u", "c")  # torch's (r, z, n)
_LSTM_ORDER = ("i", "f", "g", "o")


def _torch():
    try:
        import torch
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "gruablate.interop needs PyTorch: pip install torch (the 'torch' extra)"
        ) from None
    return torch


def _suffix(layer: int, direction: int) -> str:
    """PyTorch's suffix of a layer's parameter names: ``_l1``, ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def _check_module(module: Any, layer: int = 0, direction: int = 0) -> tuple[str, int]:
    torch = _torch()
    if isinstance(module, torch.nn.GRU):
        name, n_gates = "gru_reset_after", 3
    elif isinstance(module, torch.nn.LSTM):
        name, n_gates = "lstm", 4
        if module.proj_size:
            raise ValueError("an nn.LSTM with proj_size > 0 has no gruablate counterpart")
    else:
        raise ValueError(
            f"from_torch takes a torch.nn.GRU or torch.nn.LSTM, got {type(module).__name__}"
        )
    if isinstance(layer, bool) or not isinstance(layer, int) or not (
            0 <= layer < module.num_layers):
        raise ValueError(f"layer must be an integer in [0, {module.num_layers}), got {layer!r}")
    directions = 2 if module.bidirectional else 1
    if direction not in range(directions):
        raise ValueError(f"direction must be {'0 or 1' if directions == 2 else '0'} for this"
                         f" module, got {direction!r}")
    return name, n_gates


def from_torch(module: Any, layer: int = 0, direction: int = 0) -> RecurrentLayer:
    """A :class:`RecurrentLayer` computing exactly what layer ``layer`` of ``module``
    computes in direction ``direction`` (0 forward, 1 reverse).

    ``module`` is a ``torch.nn.GRU`` (→ ``gru_reset_after``) or ``torch.nn.LSTM``
    (→ ``lstm``), of any depth and either direction. The layer's input size is the
    module's for layer 0 and ``directions · hidden_size`` above; its dtype follows the
    module's.
    """
    name, n_gates = _check_module(module, layer, direction)

    def part(what: str) -> np.ndarray:
        return getattr(module, what + _suffix(layer, direction)).detach().cpu().numpy()

    w_ih, w_hh = part("weight_ih"), part("weight_hh")
    H, I = module.hidden_size, w_ih.shape[1]
    zeros = np.zeros(n_gates * H, dtype=w_ih.dtype)
    b_ih = part("bias_ih") if module.bias else zeros
    b_hh = part("bias_hh") if module.bias else zeros
    dtype = str(w_ih.dtype)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"from_torch supports float32 and float64 modules, got {dtype}")
    layer = RecurrentLayer(name, I, H, dtype=dtype)
    p = layer.params

    def rows(a: np.ndarray, k: int) -> np.ndarray:
        return a[k * H : (k + 1) * H]

    if name == "gru_reset_after":
        for k, g in enumerate(_GRU_ORDER):
            p[f"W_{g}"][:] = rows(w_ih, k)
            p[f"U_{g}"][:] = rows(w_hh, k)
        p["b_r"][:] = rows(b_ih, 0) + rows(b_hh, 0)
        p["b_u"][:] = rows(b_ih, 1) + rows(b_hh, 1)
        p["b_c"][:] = rows(b_ih, 2)
        p["b_hc"][:] = rows(b_hh, 2)
    else:
        for k, g in enumerate(_LSTM_ORDER):
            p[f"W_{g}"][:] = rows(w_ih, k)
            p[f"U_{g}"][:] = rows(w_hh, k)
            p[f"b_{g}"][:] = rows(b_ih, k) + rows(b_hh, k)
    return layer


def stack_from_torch(module: Any) -> list[tuple[RecurrentLayer, ...]]:
    """Every layer of ``module`` (an ``nn.GRU`` or ``nn.LSTM``): per layer, one
    :class:`RecurrentLayer` per direction, forward first."""
    _check_module(module)
    directions = 2 if module.bidirectional else 1
    return [tuple(from_torch(module, k, d) for d in range(directions))
            for k in range(module.num_layers)]


def _counterpart(layer: RecurrentLayer) -> tuple[Any, tuple[str, ...]]:
    """The PyTorch class and gate order of ``layer``'s variant (a ``ValueError`` when it
    has none)."""
    torch = _torch()
    v = layer.variant
    gru_like = v.family == "gru" and v.reset == "after" and v.update == "coupled"
    lstm_like = v.family == "lstm" and not v.coupled_input_forget
    plain = v.gate_inputs == "xhb" and v.candidate_inputs == "xh"
    if not (plain and v.candidate_activation == "tanh" and (gru_like or lstm_like)):
        raise ValueError(
            f"variant {v.name!r} has no PyTorch counterpart; to_torch maps"
            " gru_reset_after to nn.GRU and lstm to nn.LSTM"
        )
    return ((torch.nn.GRU, _GRU_ORDER) if gru_like else (torch.nn.LSTM, _LSTM_ORDER))


def to_torch(layer: RecurrentLayer) -> Any:
    """A ``torch.nn.GRU``/``nn.LSTM`` computing exactly what ``layer`` computes.

    Only ``gru_reset_after`` and ``lstm`` (or user specs with the same switches) have a
    PyTorch counterpart.
    """
    return stack_to_torch([(layer,)])


def stack_to_torch(stack: list[tuple[RecurrentLayer, ...]] | list[RecurrentLayer]) -> Any:
    """An ``nn.GRU``/``nn.LSTM`` of ``len(stack)`` layers computing what ``stack`` (per
    layer, one layer per direction, forward first; or one layer each) computes."""
    torch = _torch()
    stack = [tuple(s) if isinstance(s, list | tuple) else (s,) for s in stack]
    if not stack or len({len(s) for s in stack}) != 1 or len(stack[0]) not in (1, 2):
        raise ValueError("stack_to_torch takes per layer one RecurrentLayer, or two (both"
                         " directions), the same number for every layer")
    first = stack[0][0]
    cls, order = _counterpart(first)
    H, I, D = first.hidden_size, first.input_size, len(stack[0])
    for k, directions in enumerate(stack):
        for layer in directions:
            want = I if k == 0 else D * H
            if (_counterpart(layer)[0] is not cls
                    or layer.hidden_size != H or layer.input_size != want
                    or layer.dtype != first.dtype):
                raise ValueError(f"layer {k} does not fit the stack: every layer must map"
                                 f" to {cls.__name__} with hidden size {H} and dtype"
                                 f" {first.dtype}, with input size {want}")
    dtype = torch.float32 if first.dtype == "float32" else torch.float64
    module = cls(I, H, num_layers=len(stack), bias=True, bidirectional=D == 2, dtype=dtype)
    gru = cls is torch.nn.GRU
    for k, directions in enumerate(stack):
        for d, layer in enumerate(directions):
            p = layer.params
            b_ih = np.concatenate([p[f"b_{g}"] for g in order])
            b_hh = np.zeros_like(b_ih)
            if gru:
                b_hh[2 * H :] = p["b_hc"]
            parts = {"weight_ih": np.concatenate([p[f"W_{g}"] for g in order]),
                     "weight_hh": np.concatenate([p[f"U_{g}"] for g in order]),
                     "bias_ih": b_ih, "bias_hh": b_hh}
            with torch.no_grad():
                for what, value in parts.items():
                    getattr(module, what + _suffix(k, d)).copy_(torch.from_numpy(value))
    return module
