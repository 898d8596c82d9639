"""PyTorch parity: gru_reset_after ↔ nn.GRU and lstm ↔ nn.LSTM through interop, float32."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gruablate import RecurrentLayer  # noqa: E402
from gruablate.interop import (  # noqa: E402
    from_torch,
    stack_from_torch,
    stack_to_torch,
    to_torch,
)

GATES = {"GRU": ("r", "u", "c"), "LSTM": ("i", "f", "g", "o")}


def _torch_grads(module, H):
    """Per-gate gradients of a torch module in gruablate's naming (biases summed)."""
    kind = type(module).__name__
    out = {}
    for k, g in enumerate(GATES[kind]):
        rows = slice(k * H, (k + 1) * H)
        out[f"W_{g}"] = module.weight_ih_l0.grad[rows].numpy()
        out[f"U_{g}"] = module.weight_hh_l0.grad[rows].numpy()
        b_ih = module.bias_ih_l0.grad[rows].numpy()
        b_hh = module.bias_hh_l0.grad[rows].numpy()
        if kind == "GRU" and g == "c":
            out["b_c"], out["b_hc"] = b_ih, b_hh
        else:
            # The two torch biases enter the same sum, so each has our gradient.
            np.testing.assert_allclose(b_ih, b_hh, rtol=1e-5, atol=1e-6)
            out[f"b_{g}"] = b_ih
    return out


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("size", [(5, 3, 4, 6), (1, 1, 1, 1), (9, 2, 7, 5)])
def test_parity_with_torch(kind, size):
    T, B, I, H = size
    torch.manual_seed(sum(size))
    module = getattr(torch.nn, kind)(I, H)
    layer = from_torch(module)
    assert layer.variant.name == ("gru_reset_after" if kind == "GRU" else "lstm")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dh = rng.standard_normal((B, H)).astype(np.float32)
    dc = rng.standard_normal((B, H)).astype(np.float32)

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    c0t = torch.tensor(c0[None], requires_grad=True)
    if kind == "GRU":
        out, hT = module(xt, h0t)
        loss = (out * torch.tensor(dy)).sum() + (hT[0] * torch.tensor(dh)).sum()
        state, dlast = h0, dh
    else:
        out, (hT, cT) = module(xt, (h0t, c0t))
        loss = (
            (out * torch.tensor(dy)).sum()
            + (hT[0] * torch.tensor(dh)).sum()
            + (cT[0] * torch.tensor(dc)).sum()
        )
        state, dlast = (h0, c0), (dh, dc)
    loss.backward()

    y, last = layer.forward(x, state)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-5)
    last_t = (hT[0],) if kind == "GRU" else (hT[0], cT[0])
    for ours, theirs in zip(last if kind == "LSTM" else (last,), last_t, strict=True):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-5)

    dx, ds0, grads = layer.backward(dy, dlast)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    ds0 = ds0 if kind == "LSTM" else (ds0,)
    np.testing.assert_allclose(ds0[0], h0t.grad[0].numpy(), rtol=1e-4, atol=1e-5)
    if kind == "LSTM":
        np.testing.assert_allclose(ds0[1], c0t.grad[0].numpy(), rtol=1e-4, atol=1e-5)
    expected = _torch_grads(module, H)
    assert set(expected) == set(grads)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", ["gru_reset_after", "lstm"])
def test_to_torch_round_trip(name):
    layer = RecurrentLayer(name, 3, 4, seed=5)
    module = to_torch(layer)
    x = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    out = module(torch.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(layer.forward(x)[0], out, rtol=1e-5, atol=1e-6)
    back = from_torch(module)
    np.testing.assert_allclose(back.forward(x)[0], out, rtol=1e-5, atol=1e-6)


def test_interop_refuses_what_does_not_map():
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        to_torch(RecurrentLayer("gru", 2, 2))
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 2\)"):
        from_torch(torch.nn.GRU(2, 2, num_layers=2), layer=2)
    with pytest.raises(ValueError, match="direction must be 0 for this module"):
        from_torch(torch.nn.GRU(2, 2), direction=1)
    with pytest.raises(ValueError, match="layer 1 does not fit the stack"):
        stack_to_torch([RecurrentLayer("lstm", 2, 3), RecurrentLayer("lstm", 2, 3)])
    with pytest.raises(ValueError, match="takes a torch.nn.GRU or torch.nn.LSTM"):
        from_torch(torch.nn.RNN(2, 2))


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_a_stack_of_any_depth_and_direction_runs_and_round_trips(kind):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(3)
    module = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True)
    stack = stack_from_torch(module)
    assert [len(s) for s in stack] == [2, 2]
    assert stack[0][0].input_size == 3 and stack[1][1].input_size == 8
    x = np.random.default_rng(2).standard_normal((5, 3, 3)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    packed = pack_padded_sequence(torch.tensor(x), torch.tensor(lengths), enforce_sorted=False)
    with torch.no_grad():
        want = pad_packed_sequence(module(packed)[0])[0].numpy()
    h = x
    for forward, backward in stack:  # PyTorch's stack: both directions, concatenated
        h = np.concatenate([forward.forward(h, lengths=lengths, keep=False)[0],
                            backward.forward(h, lengths=lengths, reverse=True,
                                             keep=False)[0]], axis=2)
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-6)
    back = stack_to_torch(stack)
    assert back.num_layers == 2 and back.bidirectional
    with torch.no_grad():
        again = pad_packed_sequence(back(packed)[0])[0].numpy()
    np.testing.assert_allclose(again, want, rtol=1e-5, atol=1e-6)
