"""Named, cached device buffers: one home for the layers' and the model's work arrays.

A training step asks for the same buffers every step; allocating them once and
handing the same array back while the size holds keeps ``cudaMalloc`` out of the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class DeviceBuffers:
    """Flat device arrays by name and dtype, reallocated only when the size changes."""

    def __init__(self, cuda: Any, dtype: Any) -> None:
        self.cuda = cuda
        self.dtype = np.dtype(dtype)
        self._buf: dict[tuple[str, np.dtype], Any] = {}

    def get(self, name: str, size: int, dtype: Any = None) -> Any:
        """A flat buffer of exactly ``size`` elements (at least one) of ``dtype``
        (default: the owner's)."""
        dtype = np.dtype(dtype or self.dtype)
        size = max(int(size), 1)
        buf = self._buf.get((name, dtype))
        if buf is None or buf.size != size:
            buf = self.cuda.device_array(size, dtype=dtype)
            self._buf[(name, dtype)] = buf
        return buf

    def scratch(self, name: str, size: int) -> Any:
        """A buffer of at least ``size`` elements: it only grows, so products of
        different sizes sharing it do not reallocate it in turn."""
        key = (name, self.dtype)
        buf = self._buf.get(key)
        if buf is None or buf.size < size:
            buf = self.cuda.device_array(max(int(size), 1), dtype=self.dtype)
            self._buf[key] = buf
        return buf

    def upload(self, name: str, host: np.ndarray) -> Any:
        """``host`` copied into the buffer ``name`` of its size and dtype."""
        buf = self.get(name, host.size, host.dtype)
        buf.copy_to_device(np.ascontiguousarray(host).reshape(-1))
        return buf
