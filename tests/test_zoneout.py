"""Zoneout on ``h`` (Krueger et al. 2016, as haste applies it): the kernels of a cell
printed with zoneout, through ``RecurrentLayer.forward(zoneout=...)`` and
``gruablate.torch.Recurrent(zoneout=p)``.

Oracles: the float64 reference of ``cells/reference.py`` run one step at a time, each
step's ``h`` mixed with the previous one by the mask as the paper defines it
(``h_t = m_t ⊙ h_{t−1} + (1 − m_t) ⊙ h̃_t``); central finite differences of the zoned
run's own forward pass for every parameter, the input and every initial state.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    as_tuple,
    assert_gradients_match_finite_differences,
    input_size,
    random_state,
)

from gruablate import RecurrentLayer
from gruablate.cells import reference

T, B, H = 5, 3, 4
#: gru (reset before: two passes), lstm (a second state), sru (h read only through
#: zoneout: the recurrence gains h), mgu (a tied gate).
NAMES = ["gru", "lstm", "sru", "mgu"]


def _setup(name, dtype="float64", seed=0):
    I = input_size(name, 3, H)
    layer = RecurrentLayer(name, I, H, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    layer.flat_params[:] = rng.normal(0.0, 0.5, layer.flat_params.size)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    s0 = random_state(layer, B, rng, 0.5)
    mask = rng.uniform(0.0, 1.0, (T, B, H)).astype(dtype)  # any weights in [0, 1]
    mask[1] = rng.integers(0, 2, (B, H))  # and a Bernoulli step
    return layer, x, s0, mask


def _zoned_reference(layer, x, s0, mask):
    """The paper's zoneout around the reference cell, one step at a time."""
    state = tuple(np.asarray(s, dtype=np.float64) for s in as_tuple(s0))
    ys = []
    for t in range(x.shape[0]):
        one = state if len(state) > 1 else state[0]
        _, new = reference.forward(layer.variant, layer.params, x[t : t + 1], one)
        new = as_tuple(new)
        h = mask[t] * state[0] + (1.0 - mask[t]) * new[0]
        state = (h, *new[1:])
        ys.append(h)
    return np.stack(ys), state


@pytest.mark.parametrize("name", NAMES)
def test_zoneout_is_the_papers_mix_around_the_cell(name):
    layer, x, s0, mask = _setup(name)
    y, last = layer.forward(x, s0, zoneout=mask)
    y_ref, last_ref = _zoned_reference(layer, x, s0, mask)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(as_tuple(last), last_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    y_inf, _ = layer.forward(x, s0, zoneout=mask, keep=False)
    np.testing.assert_array_equal(y_inf, y)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name", NAMES)
def test_zoneout_gradients_match_finite_differences(name, reverse):
    layer, x, s0, mask = _setup(name)
    lengths = np.array([T, 2, 0]) if reverse else None
    rng = np.random.default_rng(9)
    dy = rng.standard_normal((T, B, H))
    dsT = random_state(layer, B, rng)
    assert_gradients_match_finite_differences(layer, x, s0, dy, dsT, zoneout=mask,
                                              lengths=lengths, reverse=reverse)


def test_a_mask_of_zeros_is_the_plain_cell_and_of_ones_keeps_h():
    layer, x, s0, _ = _setup("lstm")
    plain, (h, c) = layer.forward(x, s0)
    zero, (hz, cz) = layer.forward(x, s0, zoneout=np.zeros((T, B, H)))
    np.testing.assert_allclose(zero, plain, rtol=1e-14, atol=1e-14)
    ones, (h1, c1) = layer.forward(x, s0, zoneout=np.ones((T, B, H)))
    np.testing.assert_array_equal(ones, np.broadcast_to(s0[0], ones.shape))  # h kept
    assert not np.allclose(c1, s0[1])  # while c moves on


def test_bad_masks_are_refused():
    layer, x, s0, mask = _setup("gru", "float32")
    with pytest.raises(ValueError, match=r"zoneout must have shape \(5, 3, 4\)"):
        layer.forward(x, zoneout=mask[:2])
    with pytest.raises(ValueError, match=r"zoneout weights must be in \[0, 1\]"):
        layer.forward(x, zoneout=mask + 1)
    with pytest.raises(ValueError, match="zoneout has dtype float64"):
        layer.forward(x, zoneout=mask.astype("float64"))


torch = pytest.importorskip("torch")


def test_the_modules_zoneout_trains_with_masks_and_evaluates_the_expectation():
    from gruablate.torch import Recurrent

    torch.manual_seed(0)
    module = Recurrent("gru", 3, 4, zoneout=0.3, dtype=torch.float64)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    module.eval()
    y_eval, _ = module(x)
    layer = module.cells[0].engine
    want, _ = layer.forward(x.numpy(), zoneout=np.full((T, B, 4), 0.3), keep=False)
    np.testing.assert_allclose(y_eval.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    module.train()
    torch.manual_seed(5)
    a, _ = module(x)
    torch.manual_seed(5)
    b, _ = module(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # torch's generator draws the masks
    assert not torch.allclose(a, y_eval)
    torch.manual_seed(5)
    m = torch.bernoulli(torch.full((T, B, 4), 0.3, dtype=torch.float64)).numpy()
    want, _ = layer.forward(x.numpy(), zoneout=m, keep=False)
    np.testing.assert_allclose(a.detach().numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "mgu"])
def test_the_modules_zoneout_gradients_pass_gradcheck(name):
    from gruablate.torch import Recurrent

    torch.manual_seed(1)
    module = Recurrent(name, 3, 4, num_layers=2, bidirectional=True, zoneout=0.25,
                       dtype=torch.float64).eval()  # the expectation: a fixed mask
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def run(x):
        y, last = module(x, lengths=lengths)
        return (y, *last) if isinstance(last, tuple) else (y, last)

    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"zoneout must be a number in \[0, 1\)"):
        Recurrent(name, 3, 4, zoneout=1.5)
