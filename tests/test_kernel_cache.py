"""Compiled kernels are cached across processes: a second process compiles nothing, and
computes exactly what the process that compiled them computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Minutes of compiling (fresh processes, empty caches): left out of the quick subset.
pytestmark = pytest.mark.slow

# lstm and gru_reset_after in float32 are the variants where a cached process once
# differed from the compiling one in the last bits: Numba links a private copy of every
# callee into each caller, and under fast-math flags that let LLVM choose which of two
# products to fuse (``f*c + i*g``), copies optimised in different modules rounded
# differently; which copy a call reached depended on what the process had compiled.
PROBE = """
import hashlib, json, numpy as np, gruablate
from gruablate.backends.cpu import kernels as cpu
out = {}
for name in ("lstm", "gru_reset_after"):
    layer = gruablate.RecurrentLayer(name, 3, 24, seed=1)
    x = np.random.default_rng(0).standard_normal((6, 3, 3)).astype(np.float32)
    y, _ = layer.forward(x)
    dx, ds0, grads = layer.backward(np.cos(y))
    blob = b"".join(a.tobytes() for a in (y, dx, *(grads[k] for k in sorted(grads))))
    k = cpu.kernels(layer.variant, "float32")
    out[name] = {"sha": hashlib.sha256(blob).hexdigest(),
                 **{n: [sum(getattr(k, n).stats.cache_hits.values()),
                        sum(getattr(k, n).stats.cache_misses.values())]
                    for n in ("forward_train", "backward")}}
print(json.dumps(out))
"""


def _run(cache_dir):
    env = dict(os.environ, GRUABLATE_CACHE_DIR=str(cache_dir))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_compiled_code_from_disk_and_agrees_bit_for_bit(tmp_path):
    first = _run(tmp_path)
    second = _run(tmp_path)
    for name in first:
        calls = ("forward_train", "backward")
        assert all(first[name][n][1] >= 1 and first[name][n][0] == 0 for n in calls), first
        assert all(second[name][n][0] >= 1 and second[name][n][1] == 0 for n in calls), second
        assert first[name]["sha"] == second[name]["sha"], name
    assert any(p.suffix == ".nbi" for p in (tmp_path / "kernels" / "__pycache__").iterdir())


NAMES_PROBE = """
from numba.core.cpu_options import FastMathOptions
from gruablate.backends.cpu.runtime import FASTMATH
# what Numba writes into every compiled function's name, also for a copy of the flags
print(FastMathOptions(FASTMATH).encode(), FastMathOptions(FastMathOptions(FASTMATH)).encode(),
      sep="|")
"""


def test_kernel_names_do_not_depend_on_the_process_hash_seed():
    """Numba mangles the fast-math flags into function names with ``str(set)``; a plain
    set prints in an order that changes with ``PYTHONHASHSEED``, so processes named the
    same kernel differently."""
    seen = set()
    for seed in range(6):  # a plain set of these three flags prints in 4 orders here
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        out = subprocess.run([sys.executable, "-c", NAMES_PROBE], env=env,
                             capture_output=True, text=True, check=True)
        seen.add(out.stdout.strip())
    assert len(seen) == 1, seen
    assert seen.pop().split("|") == ["{'afn', 'arcp', 'nsz'}"] * 2


INFER_PROBE = """
import sys, numpy as np, gruablate
layer = gruablate.RecurrentLayer("rnn", 3, 5)
x = np.ones((4, 2, 3), np.float32)
layer.forward(x, keep=False)
if sys.argv[1] == "both":
    layer.forward(x)
print("ok")
"""


def test_an_entry_point_compiled_beside_a_cached_callee_loads_in_a_new_process(tmp_path):
    """``forward_infer`` compiled in a process that loaded its callee ``_forward`` from
    the cache is cached without the list of symbols to register on load (Numba passes
    that list on only from callees it compiled). Two test workers filling one cache left
    such an entry; a later process calling it first crashed (null pointer). Reproduced
    here by removing the cached entry point and compiling it again beside the callee."""
    env = dict(os.environ, GRUABLATE_CACHE_DIR=str(tmp_path))

    def run(arg: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", INFER_PROBE, arg], env=env,
                              capture_output=True, text=True)

    assert run("both").returncode == 0
    stale = list((tmp_path / "kernels" / "__pycache__").glob("*.forward_infer-*"))
    assert stale
    for f in stale:
        f.unlink()
    assert run("infer").returncode == 0  # compiles forward_infer, loads _forward
    third = run("infer")  # loads both
    assert third.returncode == 0 and third.stdout.strip() == "ok", third.stderr[-2000:]
