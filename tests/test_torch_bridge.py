"""``gruablate.torch.Recurrent``: gruablate's cells as a PyTorch module.

Oracles: ``torch.autograd.gradcheck`` in float64 (our backward against central
differences of our forward, for every built-in variant, two bidirectional layers,
rows of different lengths, a given initial state); ``nn.GRU``/``nn.LSTM`` with the same
weights (outputs, last states and every gradient, also bidirectional on a
``PackedSequence`` of mixed lengths); and a small model trained with
``torch.optim.Adam`` beside the same model built on an MGU cell written in plain
PyTorch from ``docs/VARIANTS.md``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import BUILTINS, input_size  # noqa: E402

import gruablate  # noqa: E402
from gruablate.torch import Recurrent  # noqa: E402


def _fresh(x, state):
    """Copies of an input and a state (``h`` or a tuple) that collect gradients."""
    st = tuple(s.clone().requires_grad_(True) for s in state) if isinstance(
        state, tuple) else state.clone().requires_grad_(True)
    return x.clone().requires_grad_(True), st


def _state(module, B, requires_grad=True):
    L, H = module.num_layers * module.directions, module.hidden_size
    gen = torch.Generator().manual_seed(3)
    parts = [torch.randn(L, B, H, generator=gen, dtype=module.dtype).requires_grad_(
        requires_grad) for _ in module.variant.state_names]
    return tuple(parts) if len(parts) > 1 else parts[0]


#: Equations specs (kernels printed from their graph): two states, and five.
EQUATIONS = {
    "lstm_peephole": ["i = σ(W_i x + U_i h + p_i ⊙ c + b_i)",
                      "f = σ(W_f x + U_f h + p_f ⊙ c + b_f)", "g = tanh(W_g x + U_g h + b_g)",
                      "c' = f ⊙ c + i ⊙ g", "o = σ(W_o x + U_o h + p_o ⊙ c' + b_o)",
                      "h' = o ⊙ tanh(c')"],
    "gates_as_states": ["i' = σ(W_i x + U_i h + U_ii i + p_i ⊙ c + b_i)",
                        "f' = σ(W_f x + U_f h + U_ff f + b_f)", "g = tanh(W_g x + U_g h)",
                        "c' = f' ⊙ c + i' ⊙ g", "o' = σ(W_o x + U_o h + U_oo o)",
                        "h' = o' ⊙ tanh(c')"],
}


def _variant(name):
    if name not in EQUATIONS:
        return name
    from gruablate.cells.spec import Variant

    return Variant.from_dict({"name": name, "equations": EQUATIONS[name]})


@pytest.mark.parametrize("name", BUILTINS + list(EQUATIONS))
def test_gradcheck_every_variant_two_bidirectional_layers_with_lengths(name):
    torch.manual_seed(0)
    I = input_size(_variant(name), 3, 4)
    # MUT1, MUT2, SRU read x element-wise (I = H): a second layer would take 2H inputs.
    layers = 1 if gruablate.get_variant(_variant(name)).input_must_equal_hidden else 2
    module = Recurrent(_variant(name), I, 4, num_layers=layers, bidirectional=True,
                       dtype=torch.float64)
    x = torch.randn(4, 3, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 1])  # a whole row, a short one, a single step
    state = _state(module, 3)
    params = list(module.parameters())

    def run(x, *inputs):
        n = len(module.variant.state_names)
        st = tuple(inputs[:n]) if n > 1 else inputs[0]
        y, last = module(x, st, lengths=lengths)
        return (y, *last) if isinstance(last, tuple) else (y, last)

    inputs = (x, *(state if isinstance(state, tuple) else (state,)))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    # and the parameters' gradients, through the module's own nn.Parameters
    y, _ = module(x, state, lengths=lengths)
    assert not y[2:, 1].any() and not y[1:, 2].any()  # zeros past each row's length
    (y * torch.cos(y)).sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()

    # gradcheck on a parameter needs it as an input: the first two of the first layer.
    for p in params[:2]:
        base = p.detach().clone()

        def one(v, p=p):
            return _with_param(module, p, v, x.detach(), inputs[1:], lengths)

        assert torch.autograd.gradcheck(one, (base.clone().requires_grad_(True),),
                                        eps=1e-6, atol=1e-6, rtol=1e-5)


def _with_param(module, p, v, x, state_inputs, lengths=None):
    """The module's outputs as a function of one parameter's value ``v``."""
    name = next(n for n, q in module.named_parameters() if q is p)
    stack, cell_index, pname = name.split(".")
    cell = getattr(module, stack)[int(cell_index)]
    saved = getattr(cell, pname)
    try:
        delattr(cell, pname)
        setattr(cell, pname, v)  # a plain tensor in the parameter's place
        n = len(module.variant.state_names)
        st = tuple(s.detach() for s in state_inputs)
        y, last = module(x, st if n > 1 else st[0], lengths=lengths)
    finally:
        delattr(cell, pname)
        cell.register_parameter(pname, saved)
    return (y, *last) if isinstance(last, tuple) else (y, last)


@pytest.mark.parametrize("name, cls", [("gru_reset_after", "GRU"), ("lstm", "LSTM")])
@pytest.mark.parametrize("batch_first", [False, True])
def test_same_as_pytorch_two_layers(name, cls, batch_first):
    torch.manual_seed(1)
    peer = getattr(torch.nn, cls)(5, 6, num_layers=2, batch_first=batch_first,
                                  dtype=torch.float64)
    ours = Recurrent.from_torch(peer)
    assert ours.variant.name == name and ours.num_layers == 2
    shape = (3, 7, 5) if batch_first else (7, 3, 5)
    x = torch.randn(*shape, dtype=torch.float64)
    state = _state(ours, 3, requires_grad=False)
    outs = []
    for module in (peer, ours):
        xi, st = _fresh(x, state)
        y, last = module(xi, st)
        loss = (y * torch.sin(y)).sum() + sum(
            (s**2).sum() for s in (last if isinstance(last, tuple) else (last,)))
        loss.backward()
        grads = [xi.grad] + [s.grad for s in (st if isinstance(st, tuple) else (st,))]
        outs.append((y.detach(), last, grads))
    (y_p, last_p, g_p), (y_o, last_o, g_o) = outs
    torch.testing.assert_close(y_o, y_p, rtol=1e-10, atol=1e-12)
    for a, b in zip(last_o if isinstance(last_o, tuple) else (last_o,),
                    last_p if isinstance(last_p, tuple) else (last_p,), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(g_o, g_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # Weight gradients: gruablate's W_*/U_* blocks are rows of PyTorch's stacked ones.
    order = ("r", "u", "c") if cls == "GRU" else ("i", "f", "g", "o")
    H = 6
    for k, cell in enumerate(ours.cells):
        w_ih, w_hh = getattr(peer, f"weight_ih_l{k}").grad, getattr(peer, f"weight_hh_l{k}").grad
        for j, g in enumerate(order):
            torch.testing.assert_close(getattr(cell, f"W_{g}").grad, w_ih[j * H:(j + 1) * H],
                                       rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(getattr(cell, f"U_{g}").grad, w_hh[j * H:(j + 1) * H],
                                       rtol=1e-9, atol=1e-11)


class _TorchMGU(torch.nn.Module):
    """The MGU of docs/VARIANTS.md in plain PyTorch (Zhou et al. 2016):
    f = σ(W_f x + U_f h + b_f); ĥ = tanh(W_c x + U_c (f ⊙ h) + b_c); h' = (1 − f) ⊙ h + f ⊙ ĥ."""

    def __init__(self, params):
        super().__init__()
        for name, value in params.items():
            self.register_parameter(name, torch.nn.Parameter(value.detach().clone()))

    def forward(self, x):
        h = x.new_zeros(x.shape[1], self.U_f.shape[0])
        ys = []
        for t in range(x.shape[0]):
            f = torch.sigmoid(x[t] @ self.W_f.T + h @ self.U_f.T + self.b_f)
            c = torch.tanh(x[t] @ self.W_c.T + (f * h) @ self.U_c.T + self.b_c)
            h = (1 - f) * h + f * c
            ys.append(h)
        return torch.stack(ys)


def test_a_model_trains_like_the_same_model_on_a_plain_pytorch_cell():
    torch.manual_seed(2)
    V, E, H, T, B, delay = 6, 5, 12, 10, 8, 3
    recurrent = Recurrent("mgu", E, H, dtype=torch.float64)
    plain = _TorchMGU(dict(recurrent.cells[0].named_parameters()))
    embed = torch.nn.Embedding(V, E, dtype=torch.float64)
    head = torch.nn.Linear(H, V, dtype=torch.float64)
    models = []
    for cell in (recurrent, plain):
        e, o = torch.nn.Embedding(V, E, dtype=torch.float64), torch.nn.Linear(H, V,
                                                                                dtype=torch.float64)
        e.load_state_dict(embed.state_dict())
        o.load_state_dict(head.state_dict())
        models.append((e, cell, o, torch.optim.Adam([*e.parameters(), *cell.parameters(),
                                                     *o.parameters()], lr=0.02)))
    gen = torch.Generator().manual_seed(4)
    losses = [[], []]
    for _ in range(200):
        x = torch.randint(0, V, (T, B), generator=gen)
        target = torch.roll(x, delay, dims=0)  # copy the symbol from `delay` steps back
        for k, (e, cell, o, opt) in enumerate(models):
            y = cell(e(x))
            y = y[0] if isinstance(y, tuple) else y
            loss = torch.nn.functional.cross_entropy(o(y[delay:]).reshape(-1, V),
                                                     target[delay:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[k].append(loss.item())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-7)
    # It learned: chance is ln 6 = 1.79 nats; 200 steps took it to about 1.0.
    assert np.mean(losses[0][-20:]) < 0.7 * np.mean(losses[0][:20])


def test_from_torch_refuses_what_it_cannot_map():
    with pytest.raises(ValueError, match="torch.nn.GRU or torch.nn.LSTM"):
        Recurrent.from_torch(torch.nn.RNN(2, 3))
    with pytest.raises(ValueError, match="proj_size"):
        Recurrent.from_torch(torch.nn.LSTM(2, 3, proj_size=2))


def _pieces(module, y, last, xi, st):
    """Outputs, last states, and the input, state and every parameter gradient."""
    states = last if isinstance(last, tuple) else (last,)
    inputs = st if isinstance(st, tuple) else (st,)
    return ([y.detach()] + [s.detach() for s in states] + [xi.grad]
            + [s.grad for s in inputs])


@pytest.mark.parametrize("name, cls", [("gru_reset_after", "GRU"), ("lstm", "LSTM")])
def test_same_as_pytorch_bidirectional_on_a_packed_sequence(name, cls):
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    torch.manual_seed(4)
    peer = getattr(torch.nn, cls)(5, 6, num_layers=2, bidirectional=True,
                                  dtype=torch.float64)
    ours = Recurrent.from_torch(peer)
    assert ours.variant.name == name and ours.bidirectional and ours.directions == 2
    lengths = torch.tensor([7, 2, 5, 1, 5])  # unsorted, a tie
    x = torch.randn(7, 5, 5, dtype=torch.float64)
    state = _state(ours, 5, requires_grad=False)
    got = []
    for module in (peer, ours):
        xi, st = _fresh(x, state)
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        y, last = module(packed, st)
        assert isinstance(y, PackedSequence)
        torch.testing.assert_close(y.batch_sizes, packed.batch_sizes)
        torch.testing.assert_close(y.sorted_indices, packed.sorted_indices)
        loss = (y.data * torch.sin(y.data)).sum() + sum(
            (s**2).sum() for s in (last if isinstance(last, tuple) else (last,)))
        loss.backward()
        got.append(_pieces(module, y.data, last, xi, st))
    for a, b in zip(got[1], got[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    order = ("r", "u", "c") if cls == "GRU" else ("i", "f", "g", "o")
    H = 6
    for k in range(2):
        for d, suffix in enumerate(("", "_reverse")):
            cell = ours._cell(k, d)
            w_ih = getattr(peer, f"weight_ih_l{k}{suffix}").grad
            w_hh = getattr(peer, f"weight_hh_l{k}{suffix}").grad
            for j, g in enumerate(order):
                rows = slice(j * H, (j + 1) * H)
                torch.testing.assert_close(getattr(cell, f"W_{g}").grad, w_ih[rows],
                                           rtol=1e-9, atol=1e-11)
                torch.testing.assert_close(getattr(cell, f"U_{g}").grad, w_hh[rows],
                                           rtol=1e-9, atol=1e-11)


def test_lengths_on_a_padded_batch_equal_the_packed_sequence():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(7)
    module = Recurrent("mgu", 3, 4, num_layers=2, bidirectional=True, batch_first=True,
                       dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    y, h = module(x, lengths=lengths)
    assert y.shape == (3, 5, 8) and h.shape == (4, 3, 4)
    yp, hp = module(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    torch.testing.assert_close(pad_packed_sequence(yp, batch_first=True)[0], y)
    torch.testing.assert_close(hp, h)


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(8)
    module = Recurrent("gru", 3, 16, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    module.eval()
    plain = module(x)[0]
    module.train()
    torch.manual_seed(9)
    a = module(x)[0]
    torch.manual_seed(9)
    b = module(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # torch's generator draws the masks
    assert not torch.allclose(a, plain)
    one = Recurrent("gru", 3, 16, num_layers=1, dropout=0.5, dtype=torch.float64)
    one.train()
    torch.testing.assert_close(one(x)[0], one.eval()(x)[0])  # no layer above: none


def test_bad_inputs_are_refused_with_one_line():
    module = Recurrent("gru", 3, 4)
    with pytest.raises(ValueError, match="3-D tensor"):
        module(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dtype torch.float64 but the module is torch.float32"):
        module(torch.zeros(2, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"must be \(T, B, 3\)"):
        module(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match=r"state h must be a tensor of shape \(1, 1, 4\)"):
        module(torch.zeros(2, 1, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="a tuple"):
        Recurrent("lstm", 3, 4)(torch.zeros(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        Recurrent("gru", 3, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        Recurrent("gru", 3, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        Recurrent("gru", 3, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 2\]"):
        module(torch.zeros(2, 1, 3), lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="one length per batch row"):
        module(torch.zeros(2, 1, 3), lengths=[1, 2])


def test_an_in_place_change_before_backward_is_an_error_not_a_wrong_gradient():
    module = Recurrent("gru", 3, 4)
    y, _ = module(torch.randn(2, 1, 3))
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_two_forward_passes_then_one_backward():
    torch.manual_seed(5)
    module = Recurrent("lstm", 3, 4, dtype=torch.float64)
    a, b = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    (module(a)[0].sum() + 2 * module(b)[0].sum()).backward()
    together = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(a)[0].sum().backward()
    (2 * module(b)[0].sum()).backward()
    for g, h in zip(together, (p.grad for p in module.parameters()), strict=True):
        torch.testing.assert_close(g, h, rtol=1e-12, atol=1e-14)


def test_without_gradients_the_inference_kernels_give_the_same_outputs():
    torch.manual_seed(6)
    module = Recurrent("lstm", 3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, (h, c) = module(x)
    assert y.requires_grad
    with torch.no_grad():
        y0, (h0, c0) = module(x)
    assert not y0.requires_grad
    for a, b in ((y0, y), (h0, h), (c0, c)):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)


def test_parameters_are_the_kernels_buffers_and_a_replaced_one_is_still_read():
    """The kernels read the parameters in place (no copy per call), an optimiser's
    step is what the next call computes with, and a parameter whose storage is
    replaced (``p.data = ...``) is copied in rather than ignored."""
    torch.manual_seed(6)
    module = Recurrent("gru", 3, 4, dtype=torch.float64)
    cell = module.cells[0]
    for name in cell.names:
        assert getattr(cell, name).data_ptr() == cell.engine.params[name].ctypes.data
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    optimiser = torch.optim.SGD(module.parameters(), lr=0.1)
    module(x)[0].sum().backward()
    optimiser.step()
    reference = gruablate.RecurrentLayer("gru", 3, 4, dtype="float64")
    for name in cell.names:
        reference.params[name][...] = getattr(cell, name).detach().numpy()
    want, _ = reference.forward(x.numpy(), keep=False)
    torch.testing.assert_close(module(x)[0].detach(), torch.from_numpy(want))
    cell.U_r.data = cell.U_r.data.clone() * 3  # new storage: the engine's is stale
    reference.params["U_r"][...] = cell.U_r.detach().numpy()
    want, _ = reference.forward(x.numpy(), keep=False)
    with torch.no_grad():
        got = module(x)[0]
    torch.testing.assert_close(got, torch.from_numpy(want))
    got = module(x)[0]  # the autograd path too
    torch.testing.assert_close(got.detach(), torch.from_numpy(want))
