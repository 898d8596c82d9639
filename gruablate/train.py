"""Train one model on one task and return its run record.

:func:`train` is what ``gruablate run train`` and the sweeps call. It validates the whole
configuration first (a bad option raises ``ValueError`` before any work), then trains;
from then on nothing escapes as an exception: a loss, gradient or activation that turns
non-finite ends the run as ``"diverged"``, any other error as ``"failed"``, each with its
message in the record. Everything in the record except the two timing fields
(``train_seconds``, ``steps_per_second``) is a deterministic function of the arguments:
bitwise, on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import platform
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Numba's np.dot calls scipy's BLAS, which is otherwise loaded by the first kernel call;
# threadpoolctl caps only libraries already loaded, so without this the first run in a
# process ran on the default thread count: slower, and rounded differently from the next.
import scipy.linalg.cython_blas  # noqa: F401
from threadpoolctl import threadpool_limits

from .backends import get_backend
from .cells.catalogue import get_variant
from .cells.plan import make_plan
from .cells.spec import Variant
from .envinfo import package_versions
from .errors import NonFiniteError
from .init import SCHEMES, check_scheme
from .memory import check_fits, layer_bytes
from .model import Model, check_model_options, require_feature
from .optim import DECAYS, Adam
from .store import atomic_write_json
from .tasks import Batch, Task, make_task
from .vocabulary import OPTIONAL_SETTINGS, normalise_dtype, positive_int

TIMING_KEYS = ("train_seconds", "steps_per_second")


def versions() -> dict[str, str]:
    """Versions of what produced a record (the full environment is envinfo's job)."""
    return {"python": platform.python_version(),
            **package_versions(("numpy", "numba", "gruablate"))}


#: The deepest stack accepted: far beyond any recurrent study, and a bound on the time
#: a typo (``--layers 100000``) spends building layers before it fails.
MAX_LAYERS = 64
#: An ``ok`` run whose test metric ends more than this many times worse than the
#: trivial baseline (lower-is-better metrics only) is recorded as ``"diverged"``: a huge
#: learning rate gives finite losses of 1e11 that would otherwise enter the means.
#: 100x is beyond any honest failure to learn (an untrained copy model is 7x its
#: baseline, one predicting a constant on the adding task 1x).
EXPLODED_FACTOR = 100.0


@dataclass(frozen=True)
class TrainConfig:
    """A checked training configuration: what :func:`check_config` returns."""

    spec: Variant
    task: Task
    hidden: int
    layers: int
    steps: int
    batch: int
    seed: int
    lr: float
    backend: str
    dtype: str
    init: str
    eval_every: int
    clip: float | None
    warmup: int
    decay: str
    blas_threads: int | None
    dropout: float = 0.0
    zoneout: float = 0.0
    bidirectional: bool = False


def check_config(
    variant: str | Variant = "gru",
    task: str | Task = "adding",
    *,
    hidden: int = 64,
    steps: int = 1000,
    seed: int = 0,
    layers: int = 1,
    batch: int = 32,
    lr: float = 1e-3,
    backend: str = "cpu",
    dtype: Any = "float32",
    init: str = "torch",
    eval_every: int | None = None,
    clip: float | None = 1.0,
    warmup: int = 0,
    decay: str = "none",
    blas_threads: int | None = 1,
    dropout: float = 0.0,
    zoneout: float = 0.0,
    bidirectional: bool = False,
    require_device: bool = True,
    **task_options: Any,
) -> TrainConfig:
    """Check a training configuration without training: a ``ValueError`` naming the
    first bad option, or the :class:`TrainConfig` :func:`train` runs.

    Cheap (no kernel is compiled, nothing large allocated): sweeps call it for every
    distinct cell before the first one trains. ``task`` may be a built :class:`Task`
    (then ``task_options`` must be empty). The run's memory is estimated and refused
    when it cannot fit. ``require_device=False`` skips the check that a CUDA GPU is
    there (a sweep records such cells as failed instead of refusing the study).
    """
    spec = get_variant(variant)
    steps = positive_int("steps", steps)
    hidden = positive_int("hidden", hidden)
    layers = positive_int("layers", layers)
    if layers > MAX_LAYERS:
        raise ValueError(f"layers must be at most {MAX_LAYERS}, got {layers}")
    batch = positive_int("batch", batch)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float)
                             or not 0 <= clip < math.inf):
        raise ValueError(f"clip must be a finite number >= 0 (0 or None: no clipping),"
                         f" got {clip!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int | np.integer) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if warmup > steps:
        raise ValueError(f"warmup ({warmup} steps) is longer than the run ({steps} steps)")
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    if init not in SCHEMES:
        raise ValueError(f"unknown init scheme {init!r}; choose one of {', '.join(SCHEMES)}")
    dtype = normalise_dtype(dtype)
    the_backend = get_backend(backend)  # a ValueError naming the registered ones
    # rates, a switch, and only what the backend's model runner applies
    dropout, zoneout, bidirectional = check_model_options(
        the_backend, layers, dropout, zoneout, bidirectional)
    eval_every = max(1, steps // 10) if eval_every is None else positive_int(
        "eval_every", eval_every)
    if blas_threads is not None:
        blas_threads = positive_int("blas_threads", blas_threads)
    if isinstance(task, Task):
        if task_options:
            raise ValueError("task options go with a task name, not a built task")
        the_task = task
    else:
        the_task = make_task(task, **task_options)
    if bidirectional and the_task.readout != "last":
        # the reverse direction reads the steps after each prediction: the answer itself
        raise ValueError(f"bidirectional layers see later steps: task {the_task.name}"
                         " predicts at every step (only a task read out at its last step"
                         " may use them)")
    if the_task.variable_length:  # its batches carry lengths
        require_feature(the_backend, "lengths")
    T, B = the_task.time_scale, batch
    need = the_task.output_size * T * B * 3 * np.dtype(dtype).itemsize  # logits, dz, dy
    reason = the_backend.unsupported(spec)
    if reason is not None:  # checked on every machine: it is the spec's, not the device's
        raise ValueError(reason)
    spec.check_sizes(the_task.input_size, hidden)  # the first layer; the rest take H
    check_scheme(spec, init, the_task.time_scale)  # chrono: a gate to set, and a tmax
    plan = make_plan(spec, zoneout=bool(zoneout))
    masks = (1 if zoneout else 0) + (2 if dropout else 0)  # the masks, a dropped output
    D = 2 if bidirectional else 1  # a bidirectional layer is two, reading D·H features
    for k in range(layers * D):
        need += layer_bytes(plan, seq_len=T, batch=B, hidden=hidden, dtype=dtype,
                            input_size=the_task.input_size if k < D else D * hidden)
        need += masks * T * B * hidden * np.dtype(dtype).itemsize
    need += (D - 1) * layers * T * B * D * hidden * np.dtype(dtype).itemsize  # the joins
    check_fits(need, f"training {spec.name} at hidden {hidden}, {layers} layer(s), batch"
               f" {B} over {T} steps", "use a smaller hidden size, batch, depth or sequence")
    if require_device:
        the_backend.require()  # a BackendUnavailableError (ValueError) naming what is missing
    return TrainConfig(
        spec=spec, task=the_task, hidden=hidden, layers=layers, steps=steps, batch=batch,
        seed=int(seed), lr=float(lr), backend=the_backend.name, dtype=dtype, init=init,
        eval_every=eval_every, clip=None if not clip else float(clip), warmup=int(warmup),
        decay=decay, blas_threads=blas_threads, dropout=dropout, zoneout=zoneout,
        bidirectional=bidirectional)


def train(
    variant: str | Variant = "gru",
    task: str | Task = "adding",
    *,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Train ``variant`` on ``task`` for ``steps`` Adam steps and return the run record.

    ``options`` are :func:`check_config`'s, with its defaults (one home for both):
    ``hidden`` (64), ``steps`` (1000), ``seed``, ``layers`` (1), ``batch`` (32), ``lr``
    (1e-3), ``backend`` ("cpu"), ``dtype`` ("float32"), ``init`` ("torch"),
    ``eval_every``, ``clip`` (1.0), ``warmup``, ``decay``, ``blas_threads`` (1),
    ``dropout`` and ``zoneout`` (0: off), ``bidirectional`` (False; only for a task read
    out at its last step; see :class:`~gruablate.model.Model`), and the
    task's options, which go to the task (``seq_len``, ``delay``, ``mode``, ``permute``,
    ``path``, ...; see :func:`gruablate.list_tasks` and ``docs/TRAINING.md``). The model
    is validated every ``eval_every`` steps (default: ten times per run) and at the end,
    when it is also scored on the test split. ``clip`` bounds the global gradient norm
    (0 or None: no clipping); ``warmup`` and ``decay`` (``"none"``, ``"cosine"``,
    ``"linear"``) shape the learning rate. ``blas_threads`` caps the BLAS thread pools
    during the run (None leaves them alone): the products of a small recurrent model are
    too small to split, and on a busy 2-core machine a multi-threaded OpenBLAS made
    training 6-15x slower (measured on gru, copy delay 50, hidden 32). ``progress``
    shows a progress bar on stderr. Every option is checked first
    (:func:`check_config`): a bad one raises ``ValueError`` before any work.

    The record holds the configuration (``dropout``, ``zoneout`` and ``bidirectional``
    only when they are on, so that a record without them is what it was before they
    existed), ``status``
    (``"ok"``, ``"diverged"``, ``"failed"``, or ``"interrupted"`` when Ctrl-C stopped
    it: the exception is raised again after the record is complete, and carries it as
    ``exc.record``),
    ``metric_name``, the test ``metric``, ``val_metric``, the trivial ``baseline``,
    ``lower_is_better``, ``params``, the learning ``curve``, ``train_seconds``,
    ``steps_per_second``, ``error`` and ``versions``. A run whose test metric ends more
    than :data:`EXPLODED_FACTOR` times worse than the baseline is ``"diverged"``.
    """
    # ------------------------------------------------------------- validation
    c = check_config(variant, task, **options)
    spec, the_task, steps, seed = c.spec, c.task, c.steps, c.seed
    model = Model(
        spec, input_size=the_task.input_size, hidden=c.hidden,
        output_size=the_task.output_size, layers=c.layers, tokens=the_task.tokens,
        readout=the_task.readout, loss=the_task.loss, seed=seed, dtype=c.dtype,
        backend=c.backend, init=c.init, tmax=the_task.time_scale, dropout=c.dropout,
        zoneout=c.zoneout, bidirectional=c.bidirectional,
    )
    # The backend's optimiser: the host Adam, or one whose moments stay on the device.
    opt: Adam = get_backend(c.backend).optimiser(model, c.lr, clip=c.clip, warmup=c.warmup,
                                                 decay=c.decay, total_steps=steps)
    # The data stream gets its own seed stream, apart from the parameters'.
    batches = the_task.train_batches(np.random.default_rng([seed, 1]), c.batch)
    eval_every, blas_threads = c.eval_every, c.blas_threads

    record: dict[str, Any] = {
        "status": "ok", "variant": spec.name, "task": the_task.name, "hidden": c.hidden,
        "layers": c.layers, "seed": seed, "backend": c.backend, "dtype": c.dtype,
        "steps": steps, "batch": c.batch, "lr": c.lr, "init": c.init, "clip": c.clip,
        "warmup": c.warmup, "decay": c.decay, "eval_every": eval_every,
        "blas_threads": blas_threads,
        # only when on: a record without them reads as before they existed
        **{k: getattr(c, k) for k, off in OPTIONAL_SETTINGS.items()
           if getattr(c, k) != off},
        "task_options": the_task.config(),
        "variant_spec": spec.to_dict(), "metric_name": the_task.metric_name,
        "metric": math.nan, "val_metric": math.nan, "baseline": float(the_task.baseline),
        "lower_is_better": the_task.lower_is_better, "params": model.param_count,
        "steps_done": 0, "val_metrics": {}, "test_metrics": {}, "curve": [], "train_seconds": 0.0,
        "steps_per_second": 0.0, "error": None, "versions": versions(),
    }

    # ---------------------------------------------------------------- training
    bar = _ProgressBar(steps, the_task.name, the_task.metric_name) if progress else None
    limits = (threadpool_limits(blas_threads, user_api="blas") if blas_threads
              else contextlib.nullcontext())
    clock = {"steps": 0.0}  # seconds inside steps 2.., evaluations excluded
    start = time.perf_counter()
    interrupted: KeyboardInterrupt | None = None
    try:
        with limits:
            _fit(record, the_task, model, opt, batches, eval_every, bar, clock)
        _check_explosion(record)
    except KeyboardInterrupt as exc:  # record what was done, then stop as asked
        interrupted = exc
        record.update(status="interrupted", metric=math.nan, val_metric=math.nan,
                      error=f"interrupted after {record['steps_done']} of {steps} steps")
    except NonFiniteError as exc:
        record.update(status="diverged", error=str(exc), metric=math.nan, val_metric=math.nan)
    except Exception as exc:  # recorded, not raised: a sweep must outlive one bad cell
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      metric=math.nan, val_metric=math.nan)
    finally:
        if bar is not None:
            bar.close()
    record["train_seconds"] = time.perf_counter() - start
    timed = record["steps_done"] - 1
    record["steps_per_second"] = timed / clock["steps"] if clock["steps"] else math.nan
    if interrupted is not None:
        interrupted.record = record  # type: ignore[attr-defined]
        raise interrupted
    return record


def _check_explosion(record: dict[str, Any]) -> None:
    """Mark a finished run whose metric exploded past the baseline (see EXPLODED_FACTOR)."""
    metric, baseline = record["metric"], record["baseline"]
    if record["lower_is_better"] and baseline > 0 and metric > EXPLODED_FACTOR * baseline:
        raise NonFiniteError(
            f"the test {record['metric_name']} {metric:.4g} is more than"
            f" {EXPLODED_FACTOR:g}x the trivial baseline {baseline:.4g}: training exploded")


def _fit(record: dict[str, Any], task: Task, model: Model, opt: Adam,
         batches: Iterator[Batch], eval_every: int, bar: _ProgressBar | None,
         clock: dict[str, float]) -> None:
    """The training loop: fills ``record`` (curve, metrics) as it goes."""
    metric, steps = task.metric_name, record["steps"]

    def evaluate(split: str) -> dict[str, float]:
        scores = task.evaluate(model.predict, split)
        if not all(math.isfinite(v) for v in scores.values()):
            raise NonFiniteError(f"the {split} metrics are not finite: {scores}")
        return scores

    loss_sum, loss_n, state = 0.0, 0, None
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        b = next(batches)
        loss, state = model.forward(b.x, b.y, state if b.carry else None, b.lengths)
        model.backward()
        norm = opt.step()
        if not math.isfinite(norm):
            raise NonFiniteError(f"the gradient norm is {norm}")
        if not opt.on_device:
            model.params_changed()
        if step > 1:  # the first step loads (or compiles) the kernels: not throughput
            clock["steps"] += time.perf_counter() - t0
        record["steps_done"] = step
        loss_sum, loss_n = loss_sum + loss, loss_n + 1
        if step % eval_every == 0 or step == steps:
            val = evaluate("val")
            record["curve"].append(
                {"step": step, "train_loss": loss_sum / loss_n, "val_metric": val[metric]}
            )
            record["val_metric"], record["val_metrics"] = val[metric], val
            loss_sum, loss_n = 0.0, 0
        if bar is not None:
            bar.update(step, loss, record["val_metric"], (step - 1) / max(clock["steps"], 1e-9))
    record["test_metrics"] = evaluate("test")
    record["metric"] = record["test_metrics"][metric]


def run_id(record: dict[str, Any]) -> str:
    """A file name for a record: readable, and unique across simultaneous runs."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (f"{record['task']}-{record['variant']}-h{record['hidden']}-s{record['seed']}"
            f"-{stamp}-{secrets.token_hex(3)}")


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (the store's writer: temporary
    file, then rename), creating the folder. NaN metrics of a diverged run become
    JSON ``null``, as in every run directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


class _ProgressBar:
    """A rich progress bar on stderr: loss, validation metric, steps/s and ETA."""

    def __init__(self, steps: int, task: str, metric: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.metric = metric
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[metric]}"),
            TextColumn("{task.fields[speed]} steps/s"), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.progress.start()
        self.task_id = self.progress.add_task(task, total=steps, loss="-",
                                              metric=f"val {metric} -", speed="-")

    def update(self, step: int, loss: float, val: float, speed: float) -> None:
        shown = "-" if math.isnan(val) else f"{val:.4g}"
        self.progress.update(self.task_id, completed=step, loss=f"{loss:.4g}",
                             metric=f"val {self.metric} {shown}", speed=f"{speed:.1f}")

    def close(self) -> None:
        self.progress.stop()
