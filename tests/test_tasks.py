"""The task registry: generators against their analytic baselines, splits, and bad options."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import gruablate
from gruablate.tasks import TASKS, all_options, make_task
from gruablate.tasks import adding as adding_mod
from gruablate.tasks import copy as copy_mod
from gruablate.tasks.charlm import default_corpus


def test_list_tasks_is_the_registry():
    assert gruablate.list_tasks() == list(TASKS)
    assert set(gruablate.list_tasks()) == {"adding", "copy", "digits", "charlm", "chorales"}
    for name, cls in TASKS.items():
        assert cls.name == name
        assert cls.loss in ("ce", "mse", "bernoulli") and cls.readout in ("every", "last")


# ----------------------------------------------------------------------- adding
def test_adding_generator_gives_baseline_one_sixth():
    x, y = adding_mod.generate(np.random.default_rng(0), 50, 40_000)
    marks = x[..., 1]
    assert (marks.sum(axis=0) == 2).all()
    assert (marks[:25].sum(axis=0) == 1).all() and (marks[25:].sum(axis=0) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * marks).sum(axis=0))
    # Predicting 1 always: the MSE is the variance of the sum, 1/6 (std error ~ 0.0007).
    assert abs(((y - 1.0) ** 2).mean() - 1 / 6) < 0.003
    task = make_task("adding", seq_len=50)
    assert task.baseline == 1 / 6
    # The fixed test split scored through the task's own metric code.
    const = task.evaluate(lambda x, s: (np.ones((x.shape[1], 1)), s), "test")["mse"]
    assert abs(const - 1 / 6) < 0.015


# ------------------------------------------------------------------------- copy
def test_copy_generator_gives_memoryless_baseline():
    T, K, A = 30, 10, 8
    x, y = copy_mod.generate(np.random.default_rng(0), T, K, A, 20_000)
    assert x.shape == y.shape == (T + 2 * K, 20_000)
    assert (x[K + T - 1] == A + 1).all() and (y[-K:] == x[:K]).all()
    # The best memoryless predictor predicts each position's marginal distribution:
    # its cross-entropy is the mean entropy of those marginals, estimated here.
    entropy = 0.0
    for t in range(T + 2 * K):
        p = np.bincount(y[t], minlength=A + 1) / y.shape[1]
        entropy -= (p[p > 0] * np.log(p[p > 0])).sum()
    expected = 10 * math.log(8) / (T + 20)
    assert abs(entropy / (T + 2 * K) - expected) < 0.002
    assert make_task("copy", delay=T).baseline == pytest.approx(expected, rel=1e-12)


def test_copy_metrics_of_a_memoryless_and_a_perfect_predictor():
    task = make_task("copy", delay=12, symbols=4, alphabet=5)
    K, A, L = 4, 5, 12 + 8

    def memoryless(x, s):
        z = np.zeros((*x.shape, A + 1))
        z[: L - K, :, 0] = 50.0  # certain blank; uniform over the symbols at recall
        z[L - K :, :, 0] = -np.inf
        return z, s

    def perfect(x, s):
        z = np.full((*x.shape, A + 1), -50.0)
        z[:, :, 0][: L - K] = 50.0
        for k in range(K):
            np.put_along_axis(z[L - K + k], x[k][:, None], 50.0, axis=-1)
        return z, s

    m = task.evaluate(memoryless, "test")
    assert m["ce"] == pytest.approx(task.baseline, rel=1e-9)
    p = task.evaluate(perfect, "test")
    assert p["ce"] < 1e-12 and p["recall_accuracy"] == 1.0


# ----------------------------------------------------------------------- digits
@pytest.mark.parametrize("mode,shape", [("row", (8, 8)), ("pixel", (64, 1))])
def test_digits_splits_and_majority_baseline(mode, shape):
    task = make_task("digits", mode=mode)
    sizes = {}
    for split in ("train", "val", "test"):
        x, y = task.split(split)
        assert x.shape == (shape[0], y.size, shape[1]) and x.min() >= 0 and x.max() <= 1
        sizes[split] = y.size
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    train_y, test_y = task.split("train")[1], task.split("test")[1]
    majority = np.bincount(train_y).argmax()
    assert task.baseline == pytest.approx((test_y == majority).mean())
    z = np.zeros((test_y.size, 10))
    z[:, majority] = 1.0
    assert task.evaluate(lambda x, s: (z, s), "test")["accuracy"] == task.baseline


def test_digits_permutation_is_fixed_and_only_reorders_pixels():
    plain = make_task("digits", mode="pixel").split("test")[0][:, :, 0]
    perm = make_task("digits", mode="pixel", permute=True).split("test")[0][:, :, 0]
    assert not np.array_equal(plain, perm)
    np.testing.assert_array_equal(np.sort(plain, axis=0), np.sort(perm, axis=0))
    again = make_task("digits", mode="pixel", permute=True).split("test")[0][:, :, 0]
    np.testing.assert_array_equal(perm, again)


# ----------------------------------------------------------------------- charlm
def test_default_corpus_ships_inside_the_package():
    corpus = default_corpus()
    package = Path(gruablate.__file__).resolve().parent
    assert corpus.resolve().is_relative_to(package) and corpus.is_file()
    text = corpus.read_text(encoding="utf-8")
    assert text.startswith("LADY SUSAN") and "Gutenberg" not in text
    assert len(text) > 100_000


def test_charlm_unigram_baseline_and_carried_stream():
    task = make_task("charlm", seq_len=20)
    assert task.input_size == len(set(default_corpus().read_text(encoding="utf-8")))
    unigram = lambda x, s: (np.broadcast_to(task.unigram, (*x.shape, task.output_size)), s)
    assert task.evaluate(unigram, "test")["bpc"] == pytest.approx(task.baseline, rel=1e-12)
    assert 4.0 < task.baseline < 5.0  # English letters: about 4.1-4.5 bits under a unigram
    stream = task.train_batches(np.random.default_rng(0), 4)
    first, second = next(stream), next(stream)
    assert not first.carry and second.carry and first.x.shape == (20, 4)
    np.testing.assert_array_equal(first.y[:-1], first.x[1:])
    np.testing.assert_array_equal(second.x[0], first.y[-1])  # the text continues


def test_charlm_reads_a_user_file(tmp_path):
    path = tmp_path / "abc.txt"
    path.write_text("abcab" * 400, encoding="utf-8")
    task = make_task("charlm", path=str(path), seq_len=10)
    assert task.input_size == 3 and task.config() == {"path": str(path), "seq_len": 10}


# --------------------------------------------------------------------- chorales
def test_chorales_piano_rolls_and_marginal_baseline():
    pytest.importorskip("music21")
    task = make_task("chorales", limit=10, seq_len=8)
    rolls = [r for split in ("train", "val", "test") for r in task._rolls[split]]
    assert len(rolls) == 10 and task.input_size == 88
    for roll in rolls:
        assert set(np.unique(roll)) <= {0.0, 1.0}
        assert roll.sum(axis=1).max() <= 4  # four voices
        assert (roll.sum(axis=1) > 0).mean() > 0.9  # music sounds on nearly every beat
    logit = np.log(task.key_prob) - np.log1p(-task.key_prob)
    marginal = lambda x, s: (np.broadcast_to(logit, (*x.shape[:2], 88)), s)
    assert task.evaluate(marginal, "test")["nll"] == pytest.approx(task.baseline, rel=1e-12)
    batch = next(task.train_batches(np.random.default_rng(0), 3))
    np.testing.assert_array_equal(batch.x[1:], batch.y[:-1])


# ------------------------------------------------------------------ bad options
@pytest.mark.parametrize(
    "name,options,message",
    [
        ("sorting", {}, "unknown task 'sorting'"),
        ("adding", {"delay": 3}, "has no option 'delay'"),
        ("adding", {"seq_len": 1}, "seq_len must be at least 2"),
        ("copy", {"delay": 0}, "delay must be at least 1"),
        ("copy", {"delay": 2.5}, "delay must be an integer"),
        ("digits", {"mode": "column"}, "mode must be one of row, pixel"),
        ("charlm", {"path": "/no/such/file.txt"}, "text file not found"),
        ("charlm", {"seq_len": 0}, "seq_len must be at least 1"),
    ],
)
def test_bad_task_options_are_refused_by_name(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_task(name, **options)


def test_charlm_refuses_a_too_short_text(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match="has 9 characters"):
        make_task("charlm", path=str(path))


def test_option_names_have_one_type_across_tasks():
    opts = all_options()
    assert {"seq_len", "delay", "mode", "permute", "path"} <= set(opts)
    assert opts["seq_len"].type is int and opts["permute"].type is bool


def test_eval_splits_do_not_depend_on_anything_but_options():
    a, b = make_task("adding", seq_len=10), make_task("adding", seq_len=10)
    for split in ("val", "test"):
        for u, v in zip(a.split(split), b.split(split), strict=True):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.split("val")[0], a.split("test")[0])


def test_training_docs_cover_every_task_and_option():
    # The docs describe the registry; this keeps them from silently falling behind it.
    docs = (Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md").read_text()
    for name, cls in TASKS.items():
        assert f"`{name}`" in docs, name
        for opt in cls.options:
            assert "--" + opt.name.replace("_", "-") in docs, (name, opt.name)
