"""Weights between PyTorch and gruablate: ``nn.GRU`` ↔ ``gru_reset_after``, ``nn.LSTM`` ↔ ``lstm``.

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


def _check_module(module: Any) -> tuple[str, int]:
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
    if module.num_layers != 1 or module.bidirectional:
        raise ValueError(
            "from_torch maps a single-layer unidirectional module; got"
            f" num_layers={module.num_layers}, bidirectional={module.bidirectional}"
        )
    return name, n_gates


def from_torch(module: Any) -> RecurrentLayer:
    """A :class:`RecurrentLayer` computing exactly what ``module`` computes.

    ``module`` is a single-layer unidirectional ``torch.nn.GRU`` (→ ``gru_reset_after``)
    or ``torch.nn.LSTM`` (→ ``lstm``). The layer's dtype follows the module's.
    """
    name, n_gates = _check_module(module)
    w_ih = module.weight_ih_l0.detach().cpu().numpy()
    w_hh = module.weight_hh_l0.detach().cpu().numpy()
    H, I = module.hidden_size, module.input_size
    zeros = np.zeros(n_gates * H, dtype=w_ih.dtype)
    b_ih = module.bias_ih_l0.detach().cpu().numpy() if module.bias else zeros
    b_hh = module.bias_hh_l0.detach().cpu().numpy() if module.bias else zeros
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


def to_torch(layer: RecurrentLayer) -> Any:
    """A ``torch.nn.GRU``/``nn.LSTM`` computing exactly what ``layer`` computes.

    Only ``gru_reset_after`` and ``lstm`` (or user specs with the same switches) have a
    PyTorch counterpart.
    """
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
    H, I = layer.hidden_size, layer.input_size
    cls, order = (torch.nn.GRU, _GRU_ORDER) if gru_like else (torch.nn.LSTM, _LSTM_ORDER)
    dtype = torch.float32 if layer.dtype == "float32" else torch.float64
    module = cls(I, H, num_layers=1, bias=True, dtype=dtype)
    p = layer.params
    w_ih = np.concatenate([p[f"W_{g}"] for g in order])
    w_hh = np.concatenate([p[f"U_{g}"] for g in order])
    b_ih = np.concatenate([p[f"b_{g}"] for g in order])
    b_hh = np.zeros_like(b_ih)
    if gru_like:
        b_hh[2 * H :] = p["b_hc"]
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        module.weight_hh_l0.copy_(torch.from_numpy(w_hh))
        module.bias_ih_l0.copy_(torch.from_numpy(b_ih))
        module.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    return module
