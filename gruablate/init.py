"""Initialisation schemes, applied in place to an existing :class:`RecurrentLayer`.

- ``"torch"``: PyTorch's default, ``U(-1/√H, 1/√H)`` for every weight and bias, with
  the LSTM forget-gate bias set to the spec's ``forget_bias`` (what the layer itself
  does on construction).
- ``"orthogonal"``: as ``"torch"``, then every recurrent block ``U_*`` (H×H) replaced by
  a random orthogonal matrix (Saxe et al. 2014; QR of a Gaussian matrix with the sign
  fix that makes it Haar-distributed). The spec's forget bias is kept.
- ``"chrono"``: as ``"torch"``, then the gate biases of Tallec & Ollivier 2018 ("Can
  recurrent neural networks warp time?"), which spread the cells' memory time scales
  over ``[1, tmax]``. In gruablate's sign conventions (``VARIANTS.md``):

  * a *keep* gate (``u``, GRU family; ``u ≈ 1`` remembers): ``b_u = log U(1, tmax−1)``;
  * a *write* gate: the tied MGU gate ``f`` (``f ≈ 1`` overwrites) gets
    ``b_f = −log U(1, tmax−1)``; the uncoupled write gate ``w`` gets ``b_w = −b_u``,
    mirroring the LSTM input gate;
  * LSTM family: ``b_f = log U(1, tmax−1)`` and, where there is an input gate,
    ``b_i = −b_f``. This replaces the spec's ``forget_bias``: that is the point of chrono.
  * an equations spec says which biases chrono sets in its ``[chrono]`` table:
    ``keep = ["b_f"]`` for gates near 1 that keep memory (``log U(1, tmax−1)``), and
    optionally ``write = [...]`` for those set to minus the same time scales (one draw
    per layer for both lists), e.g. JANET's ``b_f``. The spec's ``[init]`` constant on
    such a bias is replaced, as the LSTM's ``forget_bias`` is.

  Chrono needs a gate with a bias to act on; a variant without one (``rnn``, or ``gru2``
  whose gates have no bias) is refused rather than silently left at the default, and so
  is an equations spec without a ``[chrono]`` table (its equations do not say which gate
  keeps memory). :func:`check_scheme` raises the same errors before any layer is built
  (``train.check_config`` calls it, so a run or a study is refused up front).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .cells.spec import Variant
from .layer import RecurrentLayer

SCHEMES = ("torch", "orthogonal", "chrono")


def initialise(layer: RecurrentLayer, scheme: str = "torch", *, seed: int = 0,
               tmax: int | None = None) -> None:
    """Re-initialise ``layer``'s parameters in place with ``scheme`` (see module docs).

    ``seed`` makes the result deterministic; ``tmax`` (the longest dependency the task
    has, in steps) is required by ``"chrono"`` and ignored otherwise.
    """
    check_scheme(layer.variant, scheme, tmax, layer.params)
    layer.reset_parameters(seed)
    # A second stream, so a scheme never reuses the numbers of the default draw.
    rng = np.random.default_rng(np.random.SeedSequence([seed, SCHEMES.index(scheme)]))
    if scheme == "orthogonal":
        for name, p in layer.params.items():
            if name.startswith("U_"):
                p[...] = orthogonal(p.shape[0], rng)
    elif scheme == "chrono":
        _chrono(layer, int(tmax), rng)  # type: ignore[arg-type]  (checked above)
    layer.params_changed()  # a device backend re-uploads; the CPU's reads in place


def check_scheme(variant: Variant, scheme: str, tmax: int | None = None,
                 params: Collection[str] | None = None) -> None:
    """The ``ValueError`` :func:`initialise` would raise for a layer of ``variant``,
    before any layer is built (``params``: the layer's parameter names, by default the
    variant's)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "chrono":
        _check_chrono(variant, variant.param_shapes(1, 1) if params is None else params, tmax)


def orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random ``n × n`` orthogonal matrix (Mezzadri 2007: QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _chrono_biases(v: Variant, params: Collection[str]
                   ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The biases chrono sets, ``(keep, write)``: keep gets ``log U(1, tmax−1)``, write
    minus the same values. An equations spec's come from its ``[chrono]`` table; a switch
    spec's from its gates: the keep gate ``b_u`` or the LSTM forget gate ``b_f`` (keep),
    the MGU's tied write gate ``b_f``, the LSTM input gate ``b_i`` and the uncoupled write
    gate ``b_w`` (write). None when there is nothing to set."""
    if v.is_equations:
        return (v.chrono[0], v.chrono[1]) if v.chrono else None
    name = "b_f" if v.family == "lstm" or v.reset == "tied" else "b_u"
    if v.family == "rnn" or name not in params:
        return None
    writers = tuple(w for w in ("b_i", "b_w") if w in params)
    # A tied MGU gate f is a write gate (f near 1 overwrites): its sign flips.
    return ((), (name, *writers)) if v.reset == "tied" else ((name,), writers)


def _check_chrono(v: Variant, params: Collection[str], tmax: int | None) -> None:
    if v.is_equations and not v.chrono:
        raise ValueError(
            f"init 'chrono' needs to know which gate keeps memory, which the equations of"
            f" variant {v.name!r} do not say; declare its bias in the spec, e.g."
            f' [chrono] keep = ["b_f"] (and write = [...] for biases set to minus the same'
            f" time scales)"
        )
    if _chrono_biases(v, params) is None:
        raise ValueError(
            f"init 'chrono' needs a keep, forget or tied write gate with a bias;"
            f" variant {v.name!r} has none"
        )
    if isinstance(tmax, bool) or not isinstance(tmax, int | np.integer) or tmax < 3:
        raise ValueError(f"init 'chrono' needs tmax, an integer of at least 3; got {tmax!r}")


def _chrono(layer: RecurrentLayer, tmax: int, rng: np.random.Generator) -> None:
    p = layer.params
    timescales = np.log(rng.uniform(1.0, tmax - 1.0, layer.hidden_size))  # one draw a layer
    keep, write = _chrono_biases(layer.variant, p)  # type: ignore[misc]  (checked before)
    for name in keep:
        p[name][:] = timescales
    for name in write:
        p[name][:] = -timescales
