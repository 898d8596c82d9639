"""Source generation for the device-side training kernels (pure text: no GPU needed).

A CUDA training step keeps everything but the data on the device (:mod:`.model`,
:mod:`.optim`). Around the recurrent layers it needs a handful of small kernels,
generated here per dtype and launch geometry and loaded as a disk-cached module like
the layer kernels (:mod:`.source`); the readout products reuse the tiled ``matmul``
and ``colsum`` of the common module.

``encode_tokens``
    one-hot encoding of the uploaded integer symbols.
``add_bias``
    ``z += c`` row-wise after the readout product (clearing a buffer is the common
    module's ``zero``).
``loss_ce``, ``loss_mse``, ``loss_bernoulli``
    one thread per predicted position: its (unscaled) loss in float64 and the gradient
    on the logits, computed in float64 and stored in the model's dtype, as the host
    model does.
``clear_padding``
    with sequence lengths and a readout at every step: zeroes the per-position loss
    and the logit gradient of each position past its row's length, after the loss
    kernel (which the host gave harmless targets there), so that the mean runs over
    the real positions only.
``sum_partial``, ``sumsq_partial``, ``sum_final``
    float64 reductions without atomics: each block sums a grid-stride slice through a
    shared-memory tree into one partial; one single-block launch adds the partials.
    The order is fixed by the sizes and the geometry, so a run is deterministic.
``copy_steps``
    ``dst`` = ``src`` step by step between two flat (T, B, ·) layouts, each step read
    and written at its own offset and row stride, either side optionally in reverse
    time (each row's first ``lens[b]`` steps backwards, the rest in place:
    ``backends.state.reverse_index``; all ``T`` steps without lengths), with lengths
    reading a row's steps past its length as zero (a layer's output there), optionally
    times a (T, B, W) mask indexed by the step of the loop (dropout) and optionally
    added to what ``dst`` holds. The CUDA model runner's glue between layers: a
    reverse direction's input and output, the two directions' outputs side by side
    in one (T, B, 2H) array, dropout on the way up and down, the sum of the two
    directions' input gradients, the zeros a layer outputs past each row's length, and
    (one step, with lengths) the gradient placed at each row's own last step.
``adam``
    the Adam update of :mod:`gruablate.optim`, element-wise, with the scalars the host
    derives from the gradient norm and the schedule passed as arguments.

Every array is flat and every size ``int64``, so each kernel has one signature per
dtype (:func:`train_signatures`), which the tests compile to PTX for ``sm_90``.
"""

from __future__ import annotations

from functools import cache

from .source import DEFAULT_GEOMETRY, DTYPES, Geometry

TRAIN_KERNELS = (
    "encode_tokens",
    "add_bias",
    "loss_ce",
    "loss_mse",
    "loss_bernoulli",
    "clear_padding",
    "sum_partial",
    "sumsq_partial",
    "sum_final",
    "copy_steps",
    "adam",
)

# Argument kinds: i = int64 scalar, f = float64 scalar, a = array of the model's dtype,
# d = float64 array (losses, partial sums, float targets), l = int64 array (symbols,
# lengths).
_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "encode_tokens": (("n", "i"), ("I", "i"), ("tok", "l"), ("out", "a")),
    "add_bias": (("R", "i"), ("N", "i"), ("z", "a"), ("src", "a"), ("s_off", "i")),
    **{
        name: (
            ("R", "i"),
            ("O", "i"),
            ("z", "a"),
            ("y", tkind),
            ("n", "f"),
            ("dz", "a"),
            ("lrow", "d"),
        )
        for name, tkind in (("loss_ce", "l"), ("loss_mse", "d"), ("loss_bernoulli", "d"))
    },
    "clear_padding": (("R", "i"), ("B", "i"), ("O", "i"), ("lens", "l"), ("dz", "a"),
                      ("lrow", "d")),
    "sum_partial": (("n", "i"), ("src", "d"), ("part", "d"), ("p_off", "i")),
    "sumsq_partial": (("n", "i"), ("src", "a"), ("part", "d"), ("p_off", "i")),
    "sum_final": (("n", "i"), ("part", "d"), ("out", "d"), ("o_off", "i")),
    "copy_steps": (
        ("T", "i"),
        ("B", "i"),
        ("W", "i"),
        ("src", "a"),
        ("s_off", "i"),
        ("s_ld", "i"),
        ("s_rev", "i"),
        ("dst", "a"),
        ("d_off", "i"),
        ("d_ld", "i"),
        ("d_rev", "i"),
        ("lens", "l"),
        ("has_lens", "i"),
        ("mask", "a"),
        ("masked", "i"),
        ("add", "i"),
    ),
    "adam": (
        ("n", "i"),
        ("p", "a"),
        ("g", "a"),
        ("m", "a"),
        ("v", "a"),
        ("lr", "f"),
        ("beta1", "f"),
        ("beta2", "f"),
        ("eps", "f"),
        ("scale", "f"),
        ("bc1", "f"),
        ("bc2", "f"),
    ),
}


def train_signatures(dtype: str) -> dict[str, tuple]:
    """The one argument-type tuple of every training kernel, for ``compile_ptx``."""
    from numba.core import types

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    kinds = {
        "i": types.int64,
        "f": types.float64,
        "a": types.Array(getattr(types, dtype), 1, "C"),
        "d": types.Array(types.float64, 1, "C"),
        "l": types.Array(types.int64, 1, "C"),
    }
    return {name: tuple(kinds[k] for _, k in args) for name, args in _ARGS.items()}


def _def(name: str) -> str:
    return f"def {name}({', '.join(a for a, _ in _ARGS[name])}):"


def _block_tree(indent: str) -> list[str]:
    """Sum ``red[0:EW]`` into ``red[0]`` by halving (EW is a power of two)."""
    return [
        f"{indent}cuda.syncthreads()",
        f"{indent}s = EW // 2",
        f"{indent}while s > 0:",
        f"{indent}    if tid < s:",
        f"{indent}        red[tid] += red[tid + s]",
        f"{indent}    cuda.syncthreads()",
        f"{indent}    s //= 2",
    ]


@cache
def train_source(dtype: str, geo: Geometry = DEFAULT_GEOMETRY) -> str:
    """Module text of the training kernels for ``dtype`` and ``geo``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    ew = geo.ew_threads
    if ew & (ew - 1):
        raise ValueError(f"Geometry.ew_threads must be a power of two, got {ew}")
    tree = _block_tree("    ")
    lines = [
        f"# Generated by gruablate.backends.cuda.train_source for training ({dtype},",
        f"# geometry {geo.key}). Do not edit: the file name is the hash of this text, and",
        "# numba caches the compiled kernels beside it.",
        "import math",
        "",
        "import numpy as np",
        "from numba import cuda, float64",
        "",
        f"DT = np.{dtype}",
        "ONE = DT(1.0)",
        "ZERO = DT(0.0)",
        f"EW = {ew}",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("encode_tokens"),
        '    """out (n x I) = one-hot rows of the symbols tok (n); the host checked the range."""',
        "    i = cuda.grid(1)",
        "    if i < n * I:",
        "        out[i] = ONE if tok[i // I] == i % I else ZERO",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("add_bias"),
        '    """z (R x N) += src[s_off : s_off + N] on every row."""',
        "    i = cuda.grid(1)",
        "    if i < R * N:",
        "        z[i] += src[s_off + i % N]",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("loss_ce"),
        '    """Softmax cross-entropy of row r against class y[r]: lrow[r] = its NLL,',
        '    dz = (softmax - onehot) / n. Float64 inside, like the host model."""',
        "    r = cuda.grid(1)",
        "    if r < R:",
        "        base = r * O",
        "        zmax = float64(z[base])",
        "        for o in range(1, O):",
        "            zmax = max(zmax, float64(z[base + o]))",
        "        tot = 0.0",
        "        for o in range(O):",
        "            tot += math.exp(float64(z[base + o]) - zmax)",
        "        lse = zmax + math.log(tot)",
        "        k = y[r]",
        "        lrow[r] = lse - float64(z[base + k])",
        "        for o in range(O):",
        "            p = math.exp(float64(z[base + o]) - lse)",
        "            if o == k:",
        "                p -= 1.0",
        "            dz[base + o] = p / n",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("loss_mse"),
        '    """Squared error of row r: lrow[r] = sum_o (z - y)^2, dz = (2 / n) (z - y)."""',
        "    r = cuda.grid(1)",
        "    if r < R:",
        "        acc = 0.0",
        "        for o in range(O):",
        "            d = float64(z[r * O + o]) - y[r * O + o]",
        "            acc += d * d",
        "            dz[r * O + o] = (2.0 / n) * d",
        "        lrow[r] = acc",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("loss_bernoulli"),
        '    """Bernoulli NLL of row r summed over its O outputs, softplus(z) - y z with a',
        '    softplus that neither overflows nor loses small values; dz = (sigmoid - y) / n."""',
        "    r = cuda.grid(1)",
        "    if r < R:",
        "        acc = 0.0",
        "        for o in range(O):",
        "            zz = float64(z[r * O + o])",
        "            t = y[r * O + o]",
        "            acc += max(zz, 0.0) + math.log1p(math.exp(-abs(zz))) - t * zz",
        "            sig = 0.5 * (1.0 + math.tanh(0.5 * zz))  # no overflow in exp",
        "            dz[r * O + o] = (sig - t) / n",
        "        lrow[r] = acc",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("clear_padding"),
        '    """Position r = t B + b of the R = T B predicted positions, past its row\'s',
        '    length (t >= lens[b]): lrow[r] = 0 and dz[r O : (r + 1) O] = 0, after a loss',
        '    kernel, so the padding neither counts in the loss nor gets a gradient."""',
        "    r = cuda.grid(1)",
        "    if r < R:",
        "        if r // B >= lens[r % B]:",
        "            lrow[r] = 0.0",
        "            for o in range(O):",
        "                dz[r * O + o] = ZERO",
    ]
    for name, term, what in (
        ("sum_partial", "src[i]", "sum"),
        ("sumsq_partial", "float64(src[i]) * float64(src[i])", "sum of squares"),
    ):
        lines += [
            "",
            "",
            "@cuda.jit(cache=True)",
            _def(name),
            f'    """part[p_off + block] = float64 {what} of the block\'s grid-stride slice',
            '    of src[0:n]; a shared-memory tree, not atomics, combines the threads."""',
            "    red = cuda.shared.array(EW, float64)",
            "    tid = cuda.threadIdx.x",
            "    acc = 0.0",
            "    for i in range(cuda.grid(1), n, cuda.gridsize(1)):",
            f"        acc += {term}",
            "    red[tid] = acc",
            *tree,
            "    if tid == 0:",
            "        part[p_off + cuda.blockIdx.x] = red[0]",
        ]
    lines += [
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("sum_final"),
        '    """out[o_off] = sum of part[0:n], by one block (launched with a single block)."""',
        "    red = cuda.shared.array(EW, float64)",
        "    tid = cuda.threadIdx.x",
        "    acc = 0.0",
        "    for i in range(tid, n, EW):",
        "        acc += part[i]",
        "    red[tid] = acc",
        *tree,
        "    if tid == 0:",
        "        out[o_off] = red[0]",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("copy_steps"),
        '    """dst[d_off + (td B + b) d_ld + j] = src[s_off + (ts B + b) s_ld + j] for every',
        '    step t < T, row b < B and column j < W, where ts (td) is t, or with s_rev',
        '    (d_rev) the step that reverses row b: L - 1 - t for t < L = lens[b] (T when',
        '    has_lens is 0), t past it, where src reads as zero (a layer\'s output is zero',
        '    past a row\'s length). With masked: times mask[(t B + b) W + j]; with add: plus',
        '    what dst holds there. The host never asks for src and dst to overlap."""',
        "    i = cuda.grid(1)",
        "    if i < T * B * W:",
        "        t = i // (B * W)",
        "        b = (i // W) % B",
        "        j = i % W",
        "        L = lens[b] if has_lens else T",
        "        back = L - 1 - t if t < L else t",
        "        ts = back if s_rev else t",
        "        td = back if d_rev else t",
        "        if t < L:",
        "            v = src[s_off + (ts * B + b) * s_ld + j]",
        "        else:  # past the row's length: padding, read as zero",
        "            v = ZERO",
        "        if masked:",
        "            v *= mask[i]",
        "        at = d_off + (td * B + b) * d_ld + j",
        "        if add:",
        "            v += dst[at]",
        "        dst[at] = v",
        "",
        "",
        "@cuda.jit(cache=True)",
        _def("adam"),
        '    """One Adam step on p from g * scale, the formulas of gruablate.optim: moments',
        '    in float64 arithmetic, stored (like p) in the model\'s dtype."""',
        "    i = cuda.grid(1)",
        "    if i < n:",
        "        gi = float64(g[i]) * scale",
        "        mi = beta1 * float64(m[i]) + (1.0 - beta1) * gi",
        "        vi = beta2 * float64(v[i]) + (1.0 - beta2) * gi * gi",
        "        m[i] = mi",
        "        v[i] = vi",
        "        p[i] -= lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps)",
    ]
    return "\n".join(lines) + "\n"
