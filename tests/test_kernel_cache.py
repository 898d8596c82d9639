"""Compiled kernels are cached across processes: a second process compiles nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, numpy as np, gruablate
from gruablate.kernels import cpu
layer = gruablate.RecurrentLayer("mgu", 3, 4)
y, _ = layer.forward(np.ones((2, 1, 3), np.float32))
layer.backward(np.ones_like(y))
k = cpu.kernels(layer.variant, "float32")
print(json.dumps({n: [sum(getattr(k, n).stats.cache_hits.values()),
                      sum(getattr(k, n).stats.cache_misses.values())]
                  for n in ("forward_train", "backward")}))
"""


def _run(cache_dir):
    env = dict(os.environ, GRUABLATE_CACHE_DIR=str(cache_dir))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_compiled_code_from_disk(tmp_path):
    first = _run(tmp_path)
    assert all(misses >= 1 and hits == 0 for hits, misses in first.values()), first
    second = _run(tmp_path)
    assert all(hits >= 1 and misses == 0 for hits, misses in second.values()), second
    assert any(p.suffix == ".nbi" for p in (tmp_path / "kernels" / "__pycache__").iterdir())
