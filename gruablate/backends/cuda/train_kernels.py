"""Loading and compiling the device-side training kernels (:mod:`.cuda_train_source`).

The kernels are loaded as a disk-cached module exactly like the layer kernels of
:mod:`gruablate.backends.cuda.kernels` (numba's ``cache=True`` beside the generated file), and
:func:`compile_train_ptx` compiles them with NVVM for a compute capability without a GPU.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

from ..source import load_module
from .device import geometry, numba_cuda
from .kernels import module_ptx
from .source import DEFAULT_GEOMETRY, Geometry
from .train_source import TRAIN_KERNELS, train_signatures, train_source

__all__ = ["TRAIN_KERNELS", "compile_train_ptx", "train_kernels"]


@cache
def train_kernels(dtype: str, geo: Geometry | None = None) -> ModuleType:
    """The generated training-kernel module of ``dtype``; compiled lazily, cached on disk."""
    numba_cuda()
    geo = geo or geometry()
    return load_module(f"cudatrain_{dtype}", train_source(dtype, geo))


def compile_train_ptx(
    dtype: str, cc: tuple[int, int] = (9, 0), geo: Geometry | None = None
) -> dict[str, str]:
    """PTX of every training kernel for ``dtype``, compiled by NVVM for ``cc``.

    Needs numba-cuda's compiler libraries but no GPU; raises whatever the compiler
    raises, so a kernel that only the simulator accepts fails here.
    """
    cuda = numba_cuda()
    geo = geo or DEFAULT_GEOMETRY
    return module_ptx(cuda, train_kernels(dtype, geo), TRAIN_KERNELS, train_signatures(dtype), cc)

