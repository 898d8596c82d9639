"""Variants against the baseline variant: tests of significance and the search's
hyperparameter importance, as tables.

A *comparison group* is a task (its metric), a depth and a backend, and a hidden size
unless a search drew it: within one group every variant's ok cells are one sample (a
search's trials × seeds, or a grid point's seeds). Each variant's sample is set against
the baseline variant's (the first of the study) as Greff et al. (2017) did:

- the difference of medians, with a 95% percentile-bootstrap interval;
- Welch's t-test on the best 10% of each search's trials (at least two cells), the test
  Greff et al. used — on every cell for a grid point's seeds, which are all alike — and
  the Mann–Whitney U test on the whole samples, both two-sided;
- Holm's correction over the variants of the group, for each test on its own;
- the verdict, from Welch's test after correction at α = 0.05: ``better``, ``worse`` or
  ``no significant difference`` (``too few cells`` below two ok cells a side).

Hyperparameter importance is the fraction of the metric's variance over a variant's
trials that each drawn setting explains, by functional ANOVA on a random forest
(Optuna's fANOVA evaluator, seeded).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from ..search import choice_text
from .data import search_space

ALPHA = 0.05
TOP_FRACTION = 0.10
MIN_TOP = 2  # Welch's test needs two values a side
BOOTSTRAP_RESAMPLES = 4000
GROUP_KEYS = ("task", "metric_name", "hidden", "layers", "backend")
VERDICTS = ("better", "worse", "no significant difference", "too few cells")
COMPARISON_COLUMNS = (
    *GROUP_KEYS, "variant", "baseline_variant", "n", "baseline_n", "median",
    "baseline_median", "median_difference", "difference_low", "difference_high", "n_top",
    "top_mean", "baseline_top_mean", "welch_p", "welch_p_holm", "mannwhitney_p",
    "mannwhitney_p_holm", "verdict", "lower_is_better",
)
IMPORTANCE_COLUMNS = ("task", "metric_name", "variant", "setting", "importance", "trials")
# A forest on fewer trials than this explains noise.
MIN_IMPORTANCE_TRIALS = 8


# ------------------------------------------------------------------ statistics
def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    known = np.flatnonzero(~np.isnan(p))
    m = len(known)
    if not m:
        return out
    order = known[np.argsort(p[known], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def top(values: Any, lower_is_better: bool, fraction: float = TOP_FRACTION,
        minimum: int = MIN_TOP) -> np.ndarray:
    """The best ``fraction`` of ``values`` (at least ``minimum`` of them)."""
    x = np.sort(np.asarray(values, dtype=float))
    if not lower_is_better:
        x = x[::-1]
    k = min(len(x), max(minimum, math.ceil(fraction * len(x))))
    return x[:k]


def median_difference(a: Any, b: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
                      ) -> tuple[float, float, float]:
    """median(a) − median(b) and its 95% percentile-bootstrap interval (each sample
    resampled on its own; a fixed generator, so reports are byte-stable)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.median(a) - np.median(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    lo, hi = np.quantile(ma - mb, [0.025, 0.975])
    return diff, float(lo), float(hi)


def welch_p(a: Any, b: Any) -> float:
    """Two-sided p of Welch's t-test; for two constant samples 1 if equal, else 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def mannwhitney_p(a: Any, b: Any) -> float:
    """Two-sided p of the Mann–Whitney U test (NaN below one value a side)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        return math.nan
    from scipy.stats import mannwhitneyu

    with warnings.catch_warnings():  # all values tied: scipy warns and returns p = 1
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


# ------------------------------------------------------------------ tables
def comparison_samples(cells: pd.DataFrame) -> pd.DataFrame:
    """The ok cells with the columns of :data:`GROUP_KEYS` filled: ``hidden`` is
    ``"searched"`` for a search that drew it."""
    if not len(cells):
        return cells.assign(**{k: pd.Series(dtype=object) for k in GROUP_KEYS})
    ok = cells[(cells["status"] == "ok") & cells["metric"].notna()].copy()
    if "search" in ok:
        drawn = ok["search"].map(lambda s: "hidden" in search_space(s))
        ok["hidden"] = ok["hidden"].astype(object).where(~drawn, "searched")
    return ok


def comparison_table(cells: pd.DataFrame, baseline: str, alpha: float = ALPHA
                     ) -> pd.DataFrame:
    """Every variant against ``baseline`` in each comparison group where both have
    cells; columns :data:`COMPARISON_COLUMNS`. Rows are sorted by group, then variant."""
    ok = comparison_samples(cells)
    rows = []
    if not len(ok):
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    for key, g in ok.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        base = g[g["variant"] == baseline]["metric"].to_numpy(dtype=float)
        others = sorted(v for v in g["variant"].unique() if v != baseline)
        if not len(base) or not others:
            continue
        lib = g["lower_is_better"].dropna()
        lower = bool(lib.iloc[0]) if len(lib) else True
        # Greff's best-10% sample is the good end of a search, whose tail is bad settings;
        # the seeds of one grid point are all alike, so their test takes every one.
        searched = "trial" in g and bool(g["trial"].notna().any())
        fraction = TOP_FRACTION if searched else 1.0
        base_top = top(base, lower, fraction)
        group = []
        for v in others:
            mine = g[g["variant"] == v]["metric"].to_numpy(dtype=float)
            mine_top = top(mine, lower, fraction)
            diff, lo, hi = median_difference(mine, base)
            group.append({
                **dict(zip(GROUP_KEYS, key, strict=True)), "variant": v,
                "baseline_variant": baseline, "n": len(mine), "baseline_n": len(base),
                "median": float(np.median(mine)), "baseline_median": float(np.median(base)),
                "median_difference": diff, "difference_low": lo, "difference_high": hi,
                "n_top": len(mine_top), "top_mean": float(mine_top.mean()),
                "baseline_top_mean": float(base_top.mean()),
                "welch_p": welch_p(mine_top, base_top),
                "mannwhitney_p": mannwhitney_p(mine, base), "lower_is_better": lower,
            })
        for test in ("welch_p", "mannwhitney_p"):
            adjusted = holm([r[test] for r in group])
            for r, p in zip(group, adjusted, strict=True):
                r[f"{test}_holm"] = float(p)
        for r in group:
            r["verdict"] = _verdict(r, alpha)
        rows += group
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _verdict(r: dict[str, Any], alpha: float) -> str:
    p = r["welch_p_holm"]
    if math.isnan(p):
        return "too few cells"
    if p >= alpha:
        return "no significant difference"
    ahead = r["top_mean"] < r["baseline_top_mean"]
    return "better" if ahead == r["lower_is_better"] else "worse"


def importance_table(trials: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per task × variant of a search: each drawn setting's importance by functional
    ANOVA over the ok trials (fractions summing to 1); columns
    :data:`IMPORTANCE_COLUMNS`. Variants with fewer than
    :data:`MIN_IMPORTANCE_TRIALS` ok cells, or one drawn setting, are left out."""
    ok = trials[(trials["status"] == "ok") & trials["metric"].notna()] if len(trials) \
        else trials
    rows = []
    if not len(ok) or "search" not in ok:
        return pd.DataFrame(columns=IMPORTANCE_COLUMNS)
    for (task, metric, variant, space_text), g in ok.groupby(
            ["task", "metric_name", "variant", "search"], sort=True):
        space = search_space(space_text)
        if len(space) < 2 or len(g) < MIN_IMPORTANCE_TRIALS:
            continue
        lib = g["lower_is_better"].dropna()
        lower = bool(lib.iloc[0]) if len(lib) else True
        scores = fanova(g, space, lower, seed)
        for setting, value in scores.items():
            rows.append({"task": task, "metric_name": metric, "variant": variant,
                         "setting": setting, "importance": value, "trials": len(g)})
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)


def fanova(cells: pd.DataFrame, space: dict[str, Any], lower_is_better: bool, seed: int = 0
           ) -> dict[str, float]:
    """Each setting of ``space`` (as a study's ``search.space`` records it) → its share
    of the metric's variance over ``cells``, by Optuna's fANOVA evaluator."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from ..search import parse_distribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for name, data in space.items():
        d = parse_distribution(data, name)
        if d.kind == "choice":
            dists[name] = optuna.distributions.CategoricalDistribution(
                [choice_text(c) for c in d.choices])
        elif d.integer:
            dists[name] = optuna.distributions.IntDistribution(int(d.low), int(d.high),
                                                               log=d.log)
        else:
            dists[name] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.log)
    study = optuna.create_study(direction="minimize" if lower_is_better else "maximize")
    for _, r in cells.iterrows():
        params = {}
        for name, dist in dists.items():
            value = r[name]
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[name] = choice_text(False if value is None or (
                    isinstance(value, float) and math.isnan(value)) else value)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[name] = int(value)
            else:
                params[name] = float(value)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(r["metric"])))
    scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed),
                                   normalize=True)
    return {name: float(scores.get(name, 0.0)) for name in space}


__all__ = ["ALPHA", "COMPARISON_COLUMNS", "IMPORTANCE_COLUMNS", "comparison_table",
           "fanova", "holm", "importance_table", "mannwhitney_p", "median_difference",
           "top", "welch_p"]
