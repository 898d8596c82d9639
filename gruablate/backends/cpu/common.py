"""What the CPU kernel printer (:mod:`.kernels`) prints into every module: the compile
options, the activation functions (fast float32 forms, libm's for float64), the
row-block size and the table of arguments an entry point hands its row ``cfunc``s."""

from __future__ import annotations

from dataclasses import dataclass

# Below this many rows of the whole sequence (T·B) the recurrent weights are not packed:
# packing costs one pass over them, about what one row's product costs.
PACK_MIN_ROWS = 16
# A row block runs the whole time loop for its rows, one block per thread at a time.
# At B = 64, H = 512 the LSTM's two blocks of 32 rows were 20 % slower per row than at
# B = 32: a step's input pre-activations, products and gates for 32 rows (786 KB)
# outgrow a 1 MiB L2 beside the streamed weight panels; blocks of 16 took it back.
# Each extra block streams the packed weights once more per step, which buys nothing
# where a block's data fits anyway, so blocks are split only past this many bytes.
BLOCK_BYTES = 512 * 1024

OPTS = 'cache=True, fastmath=FASTMATH, error_model="numpy"'
ENTRY = OPTS + ", nogil=True"  # the entry points release the GIL, as before

# float32: vectorisable approximations, so gate loops vectorise (libm's exp and tanh
# are scalar calls). tanh: a rational minimax form (Eigen's float tanh, clamped at 9
# where it rounds to 1), within 2.6e-7 of the true value. sigmoid: 1 / (1 + e^-v) with
# Cephes' expf polynomial and the exponent built from bits (at most 3 ulp, relative,
# also for tiny values: sigmoid via tanh lost all relative accuracy below 1e-7 and
# failed the float32 reference test of the ReLU variant). Clamps are comparisons, so
# NaN passes through.
ACT_FAST = '''

TANH_CLAMP = DT(9.0)  # the rational form reaches 1.0 here, and stays below 1


@njit(inline="always", {opts})
def tanh(v):
    if v > TANH_CLAMP:
        v = TANH_CLAMP
    if v < -TANH_CLAMP:
        v = -TANH_CLAMP
    v2 = v * v
    p = v2 * DT(-2.76076847742355e-16) + DT(2.00018790482477e-13)
    p = v2 * p + DT(-8.60467152213735e-11)
    p = v2 * p + DT(5.12229709037114e-08)
    p = v2 * p + DT(1.48572235717979e-05)
    p = v2 * p + DT(6.37261928875436e-04)
    p = v2 * p + DT(4.89352455891786e-03)
    q = v2 * DT(1.19825839466702e-06) + DT(1.18534705686654e-04)
    q = v2 * q + DT(2.26843463243900e-03)
    q = v2 * q + DT(4.89352518554385e-03)
    t = v * p / q
    # Rounding can land one ulp above 1 near the clamp.
    if t > ONE:
        t = ONE
    if t < -ONE:
        t = -ONE
    return t


@njit(inline="always", {opts})
def _exp(v):
    # v = n ln2 + r with |r| <= ln2 / 2; e^r by Cephes' polynomial; times 2^n.
    if v > DT(88.0):
        v = DT(88.0)
    if v < DT(-87.0):
        v = DT(-87.0)
    n = np.floor(v * DT(1.44269504088896341) + HALF)
    r = v - n * DT(0.693359375) - n * DT(-2.12194440e-4)
    p = DT(1.9875691500e-4)
    p = p * r + DT(1.3981999507e-3)
    p = p * r + DT(8.3334519073e-3)
    p = p * r + DT(4.1665795894e-2)
    p = p * r + DT(1.6666665459e-1)
    p = p * r + DT(5.0000001201e-1)
    return (p * r * r + r + ONE) * pow2(n)


@njit(inline="always", {opts})
def sigmoid(v):
    return ONE / (ONE + _exp(-v))
'''

ACT_EXACT = '''

@njit(inline="always", {opts})
def tanh(v):
    return np.tanh(v)


@njit(inline="always", {opts})
def sigmoid(v):
    return ONE / (ONE + np.exp(-v))
'''

@dataclass(frozen=True)
class ArgTable:
    """The slots of the int64 array an entry point hands its row ``cfunc``: arrays by
    address, with the element count the cfunc views them with, and integers as they
    are. One numbering for both sides: :meth:`pack` writes the entry point's lines,
    :meth:`view` and :meth:`scalar` the cfunc's reads."""

    slots: tuple[tuple[str, str | None], ...]  # (name, element count; None: an integer)

    def index(self, name: str) -> int:
        return [n for n, _ in self.slots].index(name)

    def pack(self) -> str:
        lines = [f"args = np.empty({len(self.slots)}, dtype=np.int64)"]
        for i, (name, size) in enumerate(self.slots):
            lines.append(f"args[{i}] = {name if size is None else f'address({name})'}")
        return indent(lines, 4)

    def view(self, name: str, like: str = "ZERO") -> str:
        """The cfunc's view of array ``name``, of the type of ``like`` (the module's
        ``ZERO`` for its dtype, ``I64Z`` for int64)."""
        i = self.index(name)
        size = self.slots[i][1]
        assert size is not None, f"{name} is an integer slot"
        return f"carray(as_pointer(args[{i}], {like}), {size})"

    def scalar(self, name: str) -> str:
        assert self.slots[self.index(name)][1] is None, f"{name} is an array slot"
        return f"args[{self.index(name)}]"

    def fields(self, prefix: str = "") -> dict[str, str]:
        """Template fields: every array's view, every integer's read, the count, the
        packing lines (keys prefixed by ``prefix``)."""
        out = {f"{prefix}{n}": (self.view(n) if size else self.scalar(n))
               for n, size in self.slots}
        out[f"{prefix}n_args"] = str(len(self.slots))
        out[f"{prefix}pack_args"] = self.pack()
        return out


def indent(lines: list[str], n: int) -> str:
    return "\n".join(" " * n + line for line in lines)
