"""What a cell is, independent of where it runs: no Numba here.

- :mod:`.spec`: a variant as data (its switches), and everything derived from it
  (blocks, parameter shapes, FLOPs, the equations);
- :mod:`.catalogue`: the built-in variants (``variants/*.toml``) and user spec files;
- :mod:`.identity`: a variant's identity, the digest of its content;
- :mod:`.plan`: where each block lives in the packed arrays, for every backend;
- :mod:`.cellgen`: the element-wise cell code, forward and backward, that the
  backends paste into their loop templates;
- :mod:`.reference`: the float64 NumPy oracle written from ``docs/VARIANTS.md``.
"""
