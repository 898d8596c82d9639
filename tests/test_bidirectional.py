"""Bidirectional layers in gruablate's own model, training loop, CLI and studies
(``Model(bidirectional=True)``, ``train``, ``run train --bidirectional``, a study's
``bidirectional`` setting and ``[search]``).

Oracles: the model's loss against its layers run by hand, the reverse direction on the
input flipped in time (not through ``reverse=True``), the two outputs concatenated and
read out; every gradient against central finite differences in float64; the parameters
of a one-way model against the seed streams as they were before the option existed;
two runs of one seed bit for bit; ``False`` against a run that never heard of it,
record for record and cell id for cell id.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_model_gradients_match_finite_differences
from test_regularise import PlainRunner  # tests/ is on sys.path

import gruablate
from gruablate import RecurrentLayer
from gruablate.backends import get_backend, register, unregister
from gruablate.cli import main
from gruablate.errors import StudyError
from gruablate.init import initialise
from gruablate.losses import loss_and_grad
from gruablate.model import Model
from gruablate.study import Study, load_study
from gruablate.train import TIMING_KEYS, check_config

T, B, I, H, O = 4, 2, 3, 3, 2
TINY = dict(hidden=4, steps=4, batch=4, seq_len=8, eval_every=2)


def _model(variant="gru", layers=2, dtype="float64", seed=3, bidirectional=True, **kw):
    kw.setdefault("loss", "mse")
    kw.setdefault("readout", "last")
    return Model(variant, input_size=I, hidden=H, output_size=O, layers=layers, seed=seed,
                 dtype=dtype, bidirectional=bidirectional, **kw)


def _data(seed=0, readout="last", loss="mse"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I))
    shape = (T, B) if readout == "every" else (B,)
    y = rng.integers(0, O, shape) if loss == "ce" else rng.standard_normal((*shape, O))
    return x, y


def _by_hand(model, x, masks=None):
    """The model's output from its layers' public API: per depth the forward layer on
    the input, the reverse one on the input flipped in time (its output flipped back),
    the two concatenated (forward first); the readout on each direction's last step."""
    h = np.ascontiguousarray(x, dtype=model.dtype)
    for k in range(model.depth):
        fwd, rev = model.layers[2 * k], model.layers[2 * k + 1]
        (zf, df), (zr, dr) = masks[2 * k: 2 * k + 2] if masks else ((None, None),) * 2
        yf, _ = fwd.forward(h, zoneout=zf, keep=False)
        flipped = None if zr is None else np.ascontiguousarray(zr[::-1])
        yr, _ = rev.forward(np.ascontiguousarray(h[::-1]), zoneout=flipped, keep=False)
        yr = yr[::-1]
        if df is not None:
            yf, yr = yf * df, yr * dr
        h = np.concatenate([yf, yr], axis=2)
    if model.readout == "every":
        top = h
    else:  # the forward direction's step T - 1, the reverse direction's step 0
        top = np.concatenate([h[-1, :, :model.hidden], h[0, :, model.hidden:]], axis=1)
    return top @ model.V.T + model.c


def _without_timing(record):
    return {k: v for k, v in record.items() if k not in (*TIMING_KEYS, "versions")}


# ------------------------------------------------------------------- the model
def test_the_structure_of_a_bidirectional_model():
    model = _model(layers=3)
    assert model.bidirectional and model.depth == 3 and model.directions == 2
    assert model.width == 2 * H
    assert len(model.layers) == 6
    assert [layer.input_size for layer in model.layers] == [I, I, 2 * H, 2 * H, 2 * H, 2 * H]
    assert all(layer.hidden_size == H for layer in model.layers)
    assert model.V.shape == (O, 2 * H) and model.c.shape == (O,)
    assert len(model.buffers) == 7  # every layer and direction, then the readout
    assert model.param_count == sum(layer.param_count for layer in model.layers) + O * 2 * H + O
    # each direction its own parameters (its own seed stream)
    for k in range(3):
        assert not np.array_equal(model.layers[2 * k].flat_params,
                                  model.layers[2 * k + 1].flat_params)
    one_way = _model(layers=3, bidirectional=False)
    assert (one_way.depth, one_way.directions, one_way.width) == (3, 1, H)
    assert len(one_way.layers) == 3 and one_way.V.shape == (O, H)


@pytest.mark.parametrize("variant", ["gru", "lstm"])
@pytest.mark.parametrize("readout,loss", [("last", "mse"), ("last", "ce"), ("every", "ce")])
def test_the_loss_is_the_layers_run_by_hand(variant, readout, loss):
    model = _model(variant, layers=2, readout=readout, loss=loss)
    x, y = _data(readout=readout, loss=loss)
    loss_value, last = model.forward(x, y)
    z_hand = _by_hand(model, x)
    want, _ = loss_and_grad(loss, z_hand, y)
    np.testing.assert_allclose(loss_value, want, rtol=1e-12)
    z, last2 = model.predict(x)
    np.testing.assert_allclose(z, z_hand, rtol=1e-12, atol=1e-14)
    # one last state per layer and direction, in the order of model.layers
    assert len(last) == len(last2) == 4
    for s in last:
        h = s[0] if isinstance(s, tuple) else s
        assert h.shape == (B, H)
    # the forward direction's last state is its output at the last step, the reverse
    # direction's its output at step 0
    h_fwd = last[2][0] if isinstance(last[2], tuple) else last[2]
    h_rev = last[3][0] if isinstance(last[3], tuple) else last[3]
    y0, _ = model.layers[0].forward(np.ascontiguousarray(x), keep=False)
    y1, _ = model.layers[1].forward(np.ascontiguousarray(x), reverse=True, keep=False)
    below = np.concatenate([y0, y1], axis=2)
    top_f, _ = model.layers[2].forward(below, keep=False)
    top_r, _ = model.layers[3].forward(below, reverse=True, keep=False)
    np.testing.assert_allclose(h_fwd, top_f[-1], rtol=1e-12)
    np.testing.assert_allclose(h_rev, top_r[0], rtol=1e-12)


def test_a_training_forward_with_masks_is_the_layers_run_by_hand():
    model = _model(layers=2, dropout=0.3, zoneout=0.25)
    x, y = _data()
    before = model.mask_rng.bit_generator.state
    loss, _ = model.forward(x, y)
    drawn = model.runner.masks
    # one (zoneout, dropout) pair per layer and direction; dropout on the concatenated
    # output below the top layer: on both directions' halves there, none above the top
    assert len(drawn) == 4
    assert [d is None for _, d in drawn] == [False, False, True, True]
    assert all(z.shape == (T, B, H) for z, _ in drawn)
    assert not np.array_equal(drawn[0][0], drawn[1][0])  # each direction its own draw
    model.mask_rng.bit_generator.state = before
    again = model.masks(T, B, training=True)
    for (z, d), (z2, d2) in zip(drawn, again, strict=True):
        np.testing.assert_array_equal(z, z2)
        if d is not None:
            np.testing.assert_array_equal(d, d2)
    want, _ = loss_and_grad("mse", _by_hand(model, x, drawn), y)
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    # evaluation: the expectation m = p in both directions, no dropout
    p = np.full((T, B, H), 0.25)
    np.testing.assert_allclose(model.predict(x)[0],
                               _by_hand(model, x, [(p, None)] * 4), rtol=1e-12)


@pytest.mark.parametrize("variant", ["gru", "lstm"])
@pytest.mark.parametrize("readout,loss,rates", [
    ("last", "mse", {}), ("last", "ce", {"dropout": 0.3, "zoneout": 0.25}),
    ("every", "ce", {}),
])
def test_gradients_match_central_differences(variant, readout, loss, rates):
    model = _model(variant, layers=2, readout=readout, loss=loss, **rates)
    x, y = _data(1, readout, loss)
    rng = np.random.default_rng(5)
    shape = (B, H)
    state = [(rng.standard_normal(shape), rng.standard_normal(shape)) if variant == "lstm"
             else rng.standard_normal(shape) for _ in model.layers]  # carried in
    fixed = None if model.mask_rng is None else model.mask_rng.bit_generator.state

    def forward():  # every forward draws the same masks
        if fixed is not None:
            model.mask_rng.bit_generator.state = fixed
        return model.forward(x, y, state)[0]

    forward()
    model.backward()
    assert_model_gradients_match_finite_differences(model, forward, nonzero=True)


def test_the_initial_states_are_one_per_layer_and_direction():
    model = _model()
    x, y = _data()
    with pytest.raises(ValueError, match=r"one initial state per layer and direction \(4\)"):
        model.forward(x, y, [None, None])
    _, last = model.forward(x, y)
    carried, _ = model.forward(x, y, last)
    fresh, _ = model.forward(x, y)
    assert carried != fresh


# ------------------------------------------------------------- off: as before
def _as_before(variant, *, input_size, hidden, output_size, layers, seed, dtype, init="torch"):
    """The parameters the model's seed streams gave before bidirectional layers existed:
    layer k from child k of the seed, the readout from child ``layers``."""
    seqs = np.random.SeedSequence(seed).spawn(layers + 2)
    out = []
    for k in range(layers):
        s = int(seqs[k].generate_state(1)[0])
        layer = RecurrentLayer(variant, input_size if k == 0 else hidden, hidden, seed=s,
                               dtype=dtype)
        initialise(layer, init, seed=s)
        out.append(layer.flat_params.copy())
    readout = np.zeros(output_size * hidden + output_size, dtype=dtype)
    bound = 1.0 / np.sqrt(hidden)
    readout[:] = np.random.default_rng(seqs[layers]).uniform(-bound, bound, readout.size)
    return [*out, readout]


@pytest.mark.parametrize("variant", ["gru", "lstm"])
def test_off_the_parameters_of_a_seed_are_as_before(variant):
    for flag in (False, None):
        kw = {} if flag is None else {"bidirectional": flag}
        model = Model(variant, input_size=I, hidden=H, output_size=O, layers=3, seed=11,
                      dtype="float32", init="orthogonal", **kw)
        want = _as_before(variant, input_size=I, hidden=H, output_size=O, layers=3,
                          seed=11, dtype="float32", init="orthogonal")
        for (a, _), b in zip(model.buffers, want, strict=True):
            np.testing.assert_array_equal(a, b)
    # on: the forward direction of the first layer is the one-way model's first layer,
    # and the masks come from the same stream
    on = _model(variant, seed=11, dtype="float32", zoneout=0.1)
    off = _model(variant, seed=11, dtype="float32", zoneout=0.1, bidirectional=False)
    np.testing.assert_array_equal(on.layers[0].flat_params, off.layers[0].flat_params)
    assert on.mask_rng.bit_generator.state == off.mask_rng.bit_generator.state


def test_off_a_training_record_is_as_before():
    kw = dict(TINY, layers=2, seed=2)
    plain = gruablate.train("gru", "adding", **kw)
    off = gruablate.train("gru", "adding", bidirectional=False, **kw)
    assert plain["status"] == "ok", plain["error"]
    assert "bidirectional" not in plain and "bidirectional" not in off
    assert _without_timing(plain) == _without_timing(off)
    assert list(plain) == list(off)  # the same keys in the same order: the same JSON


# ---------------------------------------------------------------------- train
def test_training_is_deterministic_and_recorded():
    kw = dict(TINY, layers=2, bidirectional=True, seed=5)
    a = gruablate.train("gru", "adding", **kw)
    b = gruablate.train("gru", "adding", **kw)
    assert a["status"] == "ok", a["error"]
    assert _without_timing(a) == _without_timing(b)  # the loss trajectory bit for bit
    assert a["bidirectional"] is True
    plain = gruablate.train("gru", "adding", **dict(kw, bidirectional=False))
    # twice the layers, the upper ones reading 2H, and a readout of 2H
    assert a["params"] > 2 * plain["params"]
    assert [p["train_loss"] for p in plain["curve"]] != [p["train_loss"] for p in a["curve"]]
    ruled = gruablate.train("gru", "adding", **dict(kw, dropout=0.2, zoneout=0.1))
    assert ruled["status"] == "ok", ruled["error"]
    assert ruled["bidirectional"] is True and ruled["dropout"] == 0.2
    assert _without_timing(ruled) == _without_timing(
        gruablate.train("gru", "adding", **dict(kw, dropout=0.2, zoneout=0.1)))


def test_the_memory_estimate_counts_both_directions(monkeypatch):
    import importlib

    train_module = importlib.import_module("gruablate.train")  # the module, not train()
    seen = []
    monkeypatch.setattr(train_module, "check_fits", lambda need, *a: seen.append(need))
    check_config("gru", "adding", hidden=64, layers=2)
    check_config("gru", "adding", hidden=64, layers=2, bidirectional=True)
    one, two = seen
    assert two > 2 * one


# --------------------------------------------------------------------- refusals
@pytest.mark.parametrize("task", ["copy", "charlm"])
def test_a_task_read_out_at_every_step_is_refused(task):
    with pytest.raises(ValueError, match=rf"^bidirectional layers see later steps: task"
                                         rf" {task} predicts at every step"):
        check_config("gru", task, bidirectional=True)
    with pytest.raises(ValueError, match="see later steps"):
        gruablate.train("gru", task, bidirectional=True, steps=1)
    check_config("gru", task, bidirectional=False)


@pytest.fixture
def plain():
    """A registered backend whose model runner applies no feature (never built here)."""
    backend = register(PlainRunner())
    yield backend
    unregister(backend.name)


def test_a_runner_without_them_is_refused_before_any_work(plain):
    # No work is needed: the refusal comes before a layer (or a device) is made.
    assert "bidirectional" in get_backend("cpu").runner_features()
    assert "bidirectional" in get_backend("cuda").runner_features()  # its device runner
    assert "bidirectional" not in plain.runner_features()
    message = (r"^bidirectional layers: the model runner of backend plain_runner does not"
               r" apply it \(the cpu and cuda backends' do\)$")
    with pytest.raises(ValueError, match=message):
        _model(backend=plain.name)
    with pytest.raises(ValueError, match=message):
        check_config("gru", "adding", backend=plain.name, bidirectional=True)


@pytest.mark.parametrize("value", [1, 0, "true", None, 1.0, [True]])
def test_a_value_other_than_true_or_false_is_a_one_line_error(value):
    with pytest.raises(ValueError, match=r"^bidirectional must be true or false, got"):
        _model(bidirectional=value)
    with pytest.raises(ValueError, match=r"^bidirectional must be true or false, got"):
        check_config("gru", "adding", bidirectional=value)
    _model(bidirectional=np.True_)  # NumPy's booleans are booleans


# ------------------------------------------------------------------------ CLI
def test_run_train_takes_the_flag_and_records_it(tmp_path):
    out = tmp_path / "rec.json"
    result = CliRunner().invoke(main, [
        "run", "train", "--task", "adding", "--seq-len", "8", "--hidden", "4", "--steps",
        "3", "--batch", "4", "--bidirectional", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["bidirectional"] is True
    plain = tmp_path / "plain.json"
    result = CliRunner().invoke(main, [
        "run", "train", "--task", "adding", "--seq-len", "8", "--hidden", "4", "--steps",
        "3", "--batch", "4", "--out", str(plain), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "bidirectional" not in json.loads(plain.read_text())


@pytest.mark.parametrize("args, words", [
    (["--task", "copy"], "bidirectional layers see later steps: task copy predicts at"
                         " every step"),
])
def test_run_train_refuses_with_a_usage_error(tmp_path, args, words):
    result = CliRunner().invoke(main, ["run", "train", "--bidirectional", "--out",
                                       str(tmp_path), *args])
    assert result.exit_code == 2 and words in " ".join(result.output.split())
    assert not any(tmp_path.iterdir())


def test_run_train_refuses_a_runner_without_them_with_a_usage_error(tmp_path,
                                                                     monkeypatch):
    # The CLI offers the built-in backends only, and both run bidirectional layers: a
    # CUDA runner without them stands in for a backend that lacks them.
    monkeypatch.setattr(type(get_backend("cuda")), "runner_features",
                        lambda self: frozenset())
    result = CliRunner().invoke(main, ["run", "train", "--bidirectional", "--out",
                                       str(tmp_path), "--backend", "cuda"])
    assert result.exit_code == 2 and "backend cuda does not apply it" in " ".join(
        result.output.split())
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------- studies
def _study(**extra):
    return Study.from_dict({"name": "r", "variants": ["gru"], "tasks": {"adding": {
        "seq_len": 8}}, "hidden": [4], "layers": [1], "seeds": [0, 1], "steps": 3,
        "batch": 4, **extra})


def test_a_study_setting_is_in_its_cells_and_false_changes_no_id():
    plain, off = _study(), _study(bidirectional=False)
    assert [c.id for c in plain.cells()] == [c.id for c in off.cells()]
    assert plain.to_dict() == off.to_dict()
    on = _study(bidirectional=True)
    cells = on.cells()
    assert all(c.config["bidirectional"] is True for c in cells)
    assert all(c.train_kwargs()["bidirectional"] is True for c in cells)
    assert all("bidirectional" not in c.config for c in plain.cells())
    assert not {c.id for c in cells} & {c.id for c in plain.cells()}
    assert on.cell_settings()["adding"]["bidirectional"] is True
    # a task's table may set its own: the other task's cells keep their ids
    mixed = Study.from_dict({"name": "r", "variants": ["gru"], "hidden": [4], "seeds": [0],
                             "tasks": {"adding": {"bidirectional": True}, "copy": {}}})
    alone = Study.from_dict({"name": "r", "variants": ["gru"], "hidden": [4], "seeds": [0],
                             "tasks": {"adding": {}, "copy": {}}})
    by_task = {c.config["task"]: c for c in mixed.cells()}
    assert by_task["adding"].config["bidirectional"] is True
    assert "bidirectional" not in by_task["copy"].config
    assert {c.id for c in alone.cells() if c.config["task"] == "copy"} == {
        by_task["copy"].id}
    assert {c.id for c in alone.cells() if c.config["task"] == "adding"} != {
        by_task["adding"].id}


@pytest.mark.parametrize("extra, words", [
    ({"bidirectional": 1}, "bidirectional for task 'adding' must be true or false, got 1"),
    ({"bidirectional": "yes"}, "bidirectional for task 'adding' must be true or false"),
    ({"bidirectional": True, "tasks": {"copy": {}}},
     "bidirectional layers see later steps: task copy predicts at every step"),
    ({"search": {"trials": 2, "bidirectional": [1, 0]}},
     "search.bidirectional must be a list of true and/or false"),
    ({"search": {"trials": 2, "bidirectional": "uniform(0, 1)"}},
     "search.bidirectional must be a list of true and/or false"),
])
def test_a_bad_setting_stops_the_study_before_any_cell(extra, words):
    with pytest.raises(StudyError) as info:
        _study(**extra)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_runner_without_them_stops_the_study_before_any_cell(plain):
    with pytest.raises(StudyError) as info:
        _study(bidirectional=True, backends=[plain.name])
    assert "plain_runner does not apply it" in str(info.value) and "\n" not in str(info.value)


def test_a_search_draws_it_and_the_records_carry_it(tmp_path):
    study = _study(search={"trials": 6, "bidirectional": [True, False]})
    cells = study.cells()
    assert {c.config["bidirectional"] for c in cells} == {True, False}  # false kept
    for c in cells:
        assert c.config["bidirectional"] is study.search.draw(c.trial)["bidirectional"]
        assert c.train_kwargs()["bidirectional"] is c.config["bidirectional"]
    # end to end from a study file, through the executor
    cfg = tmp_path / "s.toml"
    cfg.write_text('name = "s"\nvariants = ["gru"]\nhidden = [4]\nlayers = [1]\n'
                   'seeds = [0]\nsteps = 2\nbatch = 4\nbidirectional = true\n'
                   '[tasks.adding]\nseq_len = 6\n')
    from gruablate.execute import run_study

    summary = run_study(load_study(cfg), out=tmp_path / "run", jobs=1)
    assert summary.exit_code == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    assert len(records) == 1
    assert records[0]["status"] == "ok" and records[0]["bidirectional"] is True


def test_run_sweep_takes_the_flag():
    base = ["run", "sweep", "--variants", "gru", "--tasks", "adding", "--hidden", "4",
            "--layers", "1", "--seeds", "0", "--steps", "3", "--dry-run"]
    plain = CliRunner().invoke(main, base)
    on = CliRunner().invoke(main, [*base, "--bidirectional"])
    off = CliRunner().invoke(main, [*base, "--no-bidirectional"])
    assert plain.exit_code == on.exit_code == off.exit_code == 0, on.output
    assert plain.output.split()[1] != on.output.split()[1]  # another cell id
    assert plain.output.split()[1] == off.output.split()[1]  # off: the same cell
    bad = CliRunner().invoke(main, [*base[:5], "copy", *base[6:], "--bidirectional"])
    assert bad.exit_code == 2 and "see later steps" in bad.output


def test_the_report_never_pools_cells_of_both_kinds():
    import pandas as pd

    from gruablate.report.data import _distinguish_tasks

    train = pd.DataFrame({"id": ["a", "b", "c"], "task": ["adding"] * 3,
                          "task_options": ['{"seq_len": 8}'] * 3, "steps": [3] * 3,
                          "bidirectional": [np.nan, True, False]})
    labelled, _ = _distinguish_tasks(train, pd.DataFrame())
    assert list(labelled["task"]) == ["adding (bidirectional=False)",
                                      "adding (bidirectional=True)",
                                      "adding (bidirectional=False)"]
    same, _ = _distinguish_tasks(train.drop(index=1), pd.DataFrame())
    assert set(same["task"]) == {"adding"}  # absent is off: nothing to tell apart
