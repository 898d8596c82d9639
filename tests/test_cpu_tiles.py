"""The CPU products' register tile: chosen from the CPU, forced by an environment
variable, never mixed up in a cache, and every tile correct on every machine.

The host's own tile runs through the whole suite; ``test_the_other_tile_passes_the
_kernel_tests`` runs the kernel tests again in a subprocess under the other tile (LLVM
splits 64-byte vectors on a CPU without AVX-512: slow there, still correct).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from gruablate import list_variants
from gruablate.backends import get_backend
from gruablate.backends.cpu import runtime

TESTS = Path(__file__).resolve().parent
OTHER_TILE_VARIANTS = ("gru", "lstm", "mingru", "gru_ln")


def test_the_tile_follows_the_cpu_features():
    assert runtime.choose_tile("+avx2,+fma,+avx512f,+avx512bw", forced="") == "avx512"
    assert runtime.choose_tile("+avx2,+fma,-avx512f", forced="") == "avx2"
    assert runtime.choose_tile("+sse2", forced="") == "avx2"  # the portable width
    assert runtime.choose_tile("+avx512f", forced="avx2") == "avx2"
    with pytest.raises(ValueError, match="GRUABLATE_CPU_TILE must be one of avx2, avx512"):
        runtime.choose_tile("", forced="avx1024")


def test_the_tile_sets_the_products_shape_and_is_recorded():
    vector_bytes, rows, kc = runtime.TILES[runtime.TILE]
    assert (vector_bytes, rows, kc) == (runtime.VECTOR_BYTES, runtime.MR_MAX, runtime.KC)
    assert runtime.panel_width("float32") == 3 * vector_bytes // 4
    assert get_backend("cpu").describe() == {"cpu_tile": runtime.TILE}


def test_cached_runtime_functions_are_named_by_their_tile():
    # Numba keys its cache on a function's code, not on the globals (the tile) it
    # reads: the tile must be in the cache file's name, or another tile's would load.
    base = runtime.gemm._cache._impl._filename_base
    assert base.startswith("runtime.gemm-") and f"-{runtime.TILE}." in base
    other = {"avx2": "avx512", "avx512": "avx2"}[runtime.TILE]
    assert other not in base
    # The exported symbols' names carry the tile too (through TAG).
    source = Path(runtime.__file__).read_bytes()
    tags = {t: hashlib.sha256(source + t.encode()).hexdigest()[:12] for t in runtime.TILES}
    assert runtime.TAG == tags[runtime.TILE] != tags[other]


def _fma_registers() -> set[str]:
    kernel = runtime._make_microkernel(runtime.MR_MAX)
    address = runtime.address
    nr = runtime.panel_width("float32")

    @njit(cache=False)
    def tile(a, p, c, k):
        kernel(address(a), 0, k, 1, address(p), 0, address(c), 0, nr, k, 0, np.float32(0))

    a = np.ones((runtime.MR_MAX, 8), np.float32)
    p = np.ones((8, nr), np.float32)
    c = np.zeros((runtime.MR_MAX, nr), np.float32)
    tile(a, p, c, 8)
    assert np.all(c == 8.0)
    asm = tile.inspect_asm(tile.signatures[0])
    return set(re.findall(r"vfmadd\w*\s+[^\n]*?%([xyz]mm)\d+", asm))


@pytest.mark.skipif("+avx512f" not in runtime.target_features().split(","),
                    reason="this CPU has no AVX-512")
def test_the_avx512_tile_computes_in_512_bit_registers():
    if runtime.TILE != "avx512":
        pytest.skip("GRUABLATE_CPU_TILE forces another tile")
    assert _fma_registers() == {"zmm"}


def test_the_avx2_tile_computes_in_256_bit_registers():
    if runtime.TILE != "avx2":
        pytest.skip("this run uses the avx512 tile")
    if "+avx2" not in runtime.target_features().split(","):
        pytest.skip("this CPU has no AVX2: LLVM splits the vectors")
    assert _fma_registers() == {"ymm"}


@pytest.mark.slow
def test_the_other_tile_passes_the_kernel_tests():
    other = {"avx2": "avx512", "avx512": "avx2"}[runtime.TILE]
    # The tile changes the products only (runtime.py), never a cell's element-wise code,
    # so the reference, gradient, path, lengths and cache tests of a few cells cover the
    # other tile: products of 2H and then H (gru: its gates, then the candidate on the
    # reset state), 4H with two states (lstm), none per step (mingru), and row means
    # beside them (gru_ln), at every size those tests take (in place, packed, parallel,
    # one row). Every built-in on the other tile took 13 minutes of a core, past CI's
    # budget on a 2-core VM; this host's tile runs all of them.
    assert set(OTHER_TILE_VARIANTS) <= set(list_variants())  # a renamed one runs nothing
    env = dict(os.environ, GRUABLATE_CPU_TILE=other,
               GRUABLATE_TEST_VARIANTS=",".join(OTHER_TILE_VARIANTS))
    files = ["test_kernels_vs_reference.py", "test_gradients.py", "test_cpu_paths.py",
             "test_thread_invariance.py", "test_kernel_cache.py", "test_cpu_tiles.py",
             "test_lengths.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         "-k", "not test_the_other_tile_passes", *(str(TESTS / f) for f in files)],
        env=env, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
