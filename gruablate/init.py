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

  Chrono needs a gate with a bias to act on; a variant without one (``rnn``, or ``gru2``
  whose gates have no bias) is refused rather than silently left at the default.
"""

from __future__ import annotations

import numpy as np

from .layer import RecurrentLayer

SCHEMES = ("torch", "orthogonal", "chrono")


def initialise(layer: RecurrentLayer, scheme: str = "torch", *, seed: int = 0,
               tmax: int | None = None) -> None:
    """Re-initialise ``layer``'s parameters in place with ``scheme`` (see module docs).

    ``seed`` makes the result deterministic; ``tmax`` (the longest dependency the task
    has, in steps) is required by ``"chrono"`` and ignored otherwise.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "chrono":
        _check_chrono(layer, tmax)
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


def orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random ``n × n`` orthogonal matrix (Mezzadri 2007: QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _memory_bias(layer: RecurrentLayer) -> str | None:
    """The bias chrono sets: the keep gate's, the LSTM forget gate's or the MGU's tied
    write gate's; None when the variant has no such gate with a bias."""
    v = layer.variant
    if v.is_equations:  # which gate keeps memory is not something equations say
        return None
    name = "b_f" if v.family == "lstm" or v.reset == "tied" else "b_u"
    return name if v.family != "rnn" and name in layer.params else None


def _check_chrono(layer: RecurrentLayer, tmax: int | None) -> None:
    if layer.variant.is_equations:
        raise ValueError(
            f"init 'chrono' needs to know which gate keeps memory, which the equations of"
            f" variant {layer.variant.name!r} do not say; give the bias in its [init] table"
        )
    if _memory_bias(layer) is None:
        raise ValueError(
            f"init 'chrono' needs a keep, forget or tied write gate with a bias;"
            f" variant {layer.variant.name!r} has none"
        )
    if isinstance(tmax, bool) or not isinstance(tmax, int | np.integer) or tmax < 3:
        raise ValueError(f"init 'chrono' needs tmax, an integer of at least 3; got {tmax!r}")


def _chrono(layer: RecurrentLayer, tmax: int, rng: np.random.Generator) -> None:
    p = layer.params
    timescales = np.log(rng.uniform(1.0, tmax - 1.0, layer.hidden_size))
    memory = _memory_bias(layer)
    # A tied MGU gate f is a write gate (f near 1 overwrites): its sign flips.
    p[memory][:] = -timescales if layer.variant.reset == "tied" else timescales
    for writer in ("b_i", "b_w"):  # LSTM input gate, uncoupled GRU write gate
        if writer in p:
            p[writer][:] = -timescales
