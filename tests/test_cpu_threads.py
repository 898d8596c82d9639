"""Numba's thread pool is started with a short OpenMP idle spin, and the environment
is left as the user had it (PyTorch, loaded later, must not inherit the setting).

Each case runs in a fresh interpreter: the pool starts once per process. Whether the
spin count helps is a timing question, answered in ``benchmarks/contention.py`` and
``benchmarks/RESULTS.md``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, numpy as np
import gruablate
before = dict(os.environ)
started_at_import = __import__("gruablate.backends.cpu.threads", fromlist=["x"])._started
layer = gruablate.RecurrentLayer("gru", 3, 4)
layer.forward(np.ones((2, 2, 3), np.float32))
from gruablate.backends.cpu import threads
import numba
print(json.dumps({"started_at_import": started_at_import, "started": threads._started,
                  "layer": numba.threading_layer(),
                  "env_changed": {k: os.environ.get(k) for k in set(before) | set(os.environ)
                                  if before.get(k) != os.environ.get(k)},
                  "spin": os.environ.get("GOMP_SPINCOUNT")}))
"""


def _run(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pool_starts_with_the_first_layer_and_leaves_the_environment_alone():
    out = _run()
    # Not at import: a PyTorch imported after would share Numba's OpenMP (see threads.py).
    assert out["started_at_import"] is False
    assert out["started"] is True
    assert out["env_changed"] == {} and out["spin"] is None


@pytest.mark.parametrize("var, value", [("GOMP_SPINCOUNT", "123"),
                                        ("OMP_WAIT_POLICY", "PASSIVE")])
def test_a_users_own_setting_is_kept(var, value):
    out = _run(**{var: value})
    assert out["env_changed"] == {}
    assert out["spin"] == (value if var == "GOMP_SPINCOUNT" else None)


def test_start_threads_sets_the_spin_count_only_while_the_pool_starts(monkeypatch):
    from gruablate.backends.cpu import threads

    seen = []
    monkeypatch.setattr(threads, "_started", False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    import numba.np.ufunc.parallel as parallel

    monkeypatch.setattr(parallel, "_launch_threads",
                        lambda: seen.append(os.environ.get("GOMP_SPINCOUNT")))
    threads.start_threads()
    threads.start_threads()  # once only
    assert seen == [str(threads.SPIN_COUNT)]
    assert "GOMP_SPINCOUNT" not in os.environ
