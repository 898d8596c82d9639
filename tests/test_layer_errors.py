"""Bad input to the layer gives a clear ValueError naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from gruablate import RecurrentLayer, SpecError


@pytest.fixture(scope="module")
def layer():
    return RecurrentLayer("gru", 3, 4)


def test_wrong_rank(layer):
    with pytest.raises(ValueError, match=r"3-D array \(T, B, I\)"):
        layer.forward(np.zeros((5, 3), np.float32))


def test_wrong_input_size(layer):
    with pytest.raises(ValueError, match=r"x must have shape \(2, 1, 3\)"):
        layer.forward(np.zeros((2, 1, 5), np.float32))


def test_wrong_dtype(layer):
    with pytest.raises(ValueError, match="dtype float64 but the layer is float32"):
        layer.forward(np.zeros((2, 1, 3)))


def test_non_finite_input(layer):
    x = np.zeros((2, 1, 3), np.float32)
    x[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        layer.forward(x)


def test_empty_sequence(layer):
    with pytest.raises(ValueError, match="at least one step"):
        layer.forward(np.zeros((0, 1, 3), np.float32))


def test_bad_state(layer):
    x = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"state\[h\] must have shape \(2, 4\)"):
        layer.forward(x, np.zeros((3, 4), np.float32))
    lstm = RecurrentLayer("lstm", 3, 4)
    with pytest.raises(ValueError, match=r"tuple \(h, c\)"):
        lstm.forward(x, np.zeros((2, 4), np.float32))


def test_backward_before_forward():
    with pytest.raises(ValueError, match="needs a preceding forward"):
        RecurrentLayer("gru", 3, 4).backward(np.zeros((1, 1, 4), np.float32))


def test_backward_shape(layer):
    layer.forward(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 1, 4\)"):
        layer.backward(np.zeros((2, 2, 4), np.float32))


def test_bad_constructor_arguments():
    with pytest.raises(SpecError, match="unknown variant"):
        RecurrentLayer("grue", 3, 4)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        RecurrentLayer("gru", 3, 0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        RecurrentLayer("gru", 3, 4, dtype="float16")
    with pytest.raises(ValueError, match="backend must be one of"):
        RecurrentLayer("gru", 3, 4, backend="tpu")


def test_params_are_views_of_one_buffer():
    layer = RecurrentLayer("gru", 3, 4, seed=0)
    layer.params["b_u"][:] = 5.0
    assert np.count_nonzero(layer.flat_params == 5.0) == 4
    same = RecurrentLayer("gru", 3, 4, seed=0)
    other = RecurrentLayer("gru", 3, 4, seed=1)
    np.testing.assert_array_equal(same.params["W_r"], RecurrentLayer("gru", 3, 4).params["W_r"])
    assert not np.array_equal(same.flat_params, other.flat_params)
    assert (RecurrentLayer("lstm", 3, 4).params["b_f"] == 1.0).all()
