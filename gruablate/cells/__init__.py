"""What a cell is, independent of where it runs: no Numba here.

- :mod:`.spec`: a variant as data (its switches), and everything derived from it
  (blocks, parameter shapes, FLOPs, the equations);
- :mod:`.catalogue`: the built-in variants (``variants/*.toml``) and user spec files;
- :mod:`.identity`: a variant's identity, the digest of its content;
- :mod:`.notation`, :mod:`.ir`: the equation grammar, and a cell as a graph (its
  schedule and derived backward pass); a switch spec's graph is that of the equations
  it renders;
- :mod:`.plan`: where each parameter and kept value lives, for every backend;
- :mod:`.irprint`: a graph's element-wise statements, printed for any backend;
- :mod:`.reference`: the float64 NumPy oracle written from ``docs/VARIANTS.md``.
"""
