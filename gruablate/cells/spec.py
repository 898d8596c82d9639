"""The `Variant` type: one point of the ablation space of gated recurrent cells.

A variant is data. From its switches everything else is derived here, in one place:
the gate blocks and their parameter names and shapes, which products see the input or
the state, the FLOP count, and the rendered equations. The kernels, the reference, the
docs and the report all read these derivations; none of them keeps a second copy.

The equations and sign conventions are those of ``VARIANTS.md`` (shipped as
``docs/VARIANTS.md``): the GRU update gate ``u`` is a *keep* gate
(``h' = u ⊙ h + (1 − u) ⊙ ĥ``); the MGU's single gate ``f`` is a *write* gate that also
resets; minGRU is written in the keep convention (``u = 1 − z`` of Feng et al. 2024).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import SpecError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FAMILIES = ("gru", "lstm", "rnn")
#: The family of a spec that states its cell as ``equations`` instead of switches.
EQUATIONS = "equations"
RESETS = ("before", "after", "none", "tied")
UPDATES = ("coupled", "uncoupled")
GATE_INPUTS = ("xhb", "hb", "h", "b", "xb")
CANDIDATE_INPUTS = ("xh", "x")
ACTIVATIONS = ("tanh", "relu", "identity")

# Which switches each family has, and their defaults when a spec leaves them out.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gru": {
        "reset": "before",
        "update": "coupled",
        "gate_inputs": "xhb",
        "candidate_inputs": "xh",
        "candidate_activation": "tanh",
    },
    "lstm": {
        "gate_inputs": "xhb",
        "candidate_inputs": "xh",
        "candidate_activation": "tanh",
        "coupled_input_forget": False,
        "forget_bias": 1.0,
    },
    "rnn": {
        "candidate_inputs": "xh",
        "candidate_activation": "tanh",
    },
}
_TEXT_KEYS = ("name", "description", "citation")
_SWITCH_KEYS = (
    "reset",
    "update",
    "gate_inputs",
    "candidate_inputs",
    "candidate_activation",
    "coupled_input_forget",
    "forget_bias",
)
_CHOICES: dict[str, tuple[str, ...]] = {
    "family": FAMILIES,
    "reset": RESETS,
    "update": UPDATES,
    "gate_inputs": GATE_INPUTS,
    "candidate_inputs": CANDIDATE_INPUTS,
    "candidate_activation": ACTIVATIONS,
}


#: What a variant name may be: it names files, figure labels and table rows, so it is
#: checked once, when the spec is read, and never needs cleaning after.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The largest forget-gate bias accepted: far beyond any use (sigmoid(30) is 1 in
#: float64), and small enough to stay finite in float32.
MAX_FORGET_BIAS = 1e4


@dataclass(frozen=True)
class Block:
    """One H-row block of pre-activations: a sigmoid gate or the candidate.

    ``role`` names what the block does: ``reset``, ``keep`` (coupled or uncoupled
    update), ``write`` (uncoupled write gate, or the tied MGU gate), ``input``,
    ``forget``, ``output`` (LSTM) or ``candidate``.
    """

    name: str
    role: str
    sees_x: bool
    sees_h: bool
    has_bias: bool

    @property
    def is_candidate(self) -> bool:
        return self.role == "candidate"


@dataclass(frozen=True)
class Variant:
    """A validated point of the ablation space (see ``VARIANTS.md``).

    Build one with :func:`Variant.from_dict` or :func:`gruablate.get_variant`; both check
    every key and refuse contradictory switches with a message naming them.
    """

    name: str
    family: str
    description: str = ""
    citation: str = ""
    reset: str | None = None
    update: str | None = None
    gate_inputs: str | None = None
    candidate_inputs: str = "xh"
    candidate_activation: str = "tanh"
    coupled_input_forget: bool | None = None
    forget_bias: float | None = None
    #: An ``equations`` spec: its equations in canonical spelling, its ``[init]``, and
    #: its ``[chrono]``: the biases init "chrono" sets, ``(keep, write)``, each sorted
    #: (``()`` when the spec has no ``[chrono]`` table).
    cell_equations: tuple[str, ...] = ()
    init: tuple[tuple[str, float], ...] = ()
    chrono: tuple[tuple[str, ...], ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:  # a Variant built directly is held to the same name rule
        _check_name(self.name, f" in {self.source}" if self.source else "")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> Variant:
        """Validate a spec mapping (as read from TOML) and build the variant."""
        where = f" in {source}" if source else ""
        data = dict(data)
        if "equations" in data or data.get("family") == EQUATIONS:
            return cls._from_equations(data, source, where)
        if "chrono" in data:
            raise SpecError(f"key 'chrono'{where} is for equations specs: a switch spec's"
                            " gates already say which bias init 'chrono' sets")
        known = {"family", *_TEXT_KEYS, *_SWITCH_KEYS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"unknown key {unknown[0]!r}{where}; known keys: {', '.join(sorted(known))}"
            )
        if "name" not in data:
            raise SpecError(f"missing key 'name'{where}")
        if "family" not in data:
            raise SpecError(f"missing key 'family'{where}; one of {', '.join(FAMILIES)}")
        for key in _TEXT_KEYS:
            if key in data and not isinstance(data[key], str):
                raise SpecError(f"key {key!r}{where} must be a string, got {data[key]!r}")
        family = data["family"]
        _check_choice("family", family, where)
        defaults = _FAMILY_DEFAULTS[family]
        for key in _SWITCH_KEYS:
            if key in data and key not in defaults:
                raise SpecError(
                    f"key {key!r}{where} does not apply to family {family!r}"
                    f" (its switches: {', '.join(defaults)})"
                )
        values = {**defaults, **{k: data[k] for k in _SWITCH_KEYS if k in data}}
        for key, value in values.items():
            if key in _CHOICES:
                _check_choice(key, value, where)
        if "coupled_input_forget" in values and not isinstance(
            values["coupled_input_forget"], bool
        ):
            raise SpecError(
                f"key 'coupled_input_forget'{where} must be true or false,"
                f" got {values['coupled_input_forget']!r}"
            )
        if "forget_bias" in values:
            fb = values["forget_bias"]
            if isinstance(fb, bool) or not isinstance(fb, int | float):
                raise SpecError(f"key 'forget_bias'{where} must be a number, got {fb!r}")
            if abs(fb) > MAX_FORGET_BIAS or not math.isfinite(fb):  # ints first: 10**400
                raise SpecError(f"key 'forget_bias'{where} must be a finite number of size at"
                                f" most {MAX_FORGET_BIAS:g}, got {fb!r}")
            values["forget_bias"] = float(fb)
        variant = cls(
            name=data["name"],
            family=family,
            description=data.get("description", ""),
            citation=data.get("citation", ""),
            source=source,
            **values,
        )
        variant._check_clashes(where)
        return variant

    @classmethod
    def _from_equations(cls, data: dict[str, Any], source: str, where: str) -> Variant:
        from .ir import build
        from .notation import equation_text, parse_equation

        known = {"family", "equations", "init", "chrono", *_TEXT_KEYS}
        unknown = sorted(set(data) - known)
        if unknown:
            extra = " (switches and equations do not mix)" if unknown[0] in _SWITCH_KEYS else ""
            raise SpecError(f"unknown key {unknown[0]!r}{where} in an equations spec{extra};"
                            f" known keys: {', '.join(sorted(known))}")
        if data.get("family", EQUATIONS) != EQUATIONS:
            raise SpecError(f"family {data['family']!r}{where} has switches, not equations;"
                            f" an equations spec has family {EQUATIONS!r} or none")
        if "name" not in data:
            raise SpecError(f"missing key 'name'{where}")
        for key in _TEXT_KEYS:
            if key in data and not isinstance(data[key], str):
                raise SpecError(f"key {key!r}{where} must be a string, got {data[key]!r}")
        if "equations" not in data:
            raise SpecError(f"missing key 'equations'{where}")
        raw = data["equations"]
        ir = build(raw, where)  # every check, with the equation named
        canonical = tuple(equation_text(parse_equation(e)) for e in raw)
        init = data.get("init", {})
        if not isinstance(init, dict):
            raise SpecError(f"key 'init'{where} must be a table of parameter = number")
        values = []
        for name, value in init.items():
            role = ir.params.get(name)
            if role is None:
                raise SpecError(f"init {name!r}{where} is not a parameter of the equations")
            if role not in ("b", "p"):
                raise SpecError(f"init {name!r}{where}: only vectors (b_k, p_k) take a"
                                " constant initial value")
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and abs(value) <= MAX_FORGET_BIAS):
                raise SpecError(f"init {name!r}{where} must be a finite number of size at"
                                f" most {MAX_FORGET_BIAS:g}, got {value!r}")
            values.append((name, float(value)))
        chrono = _chrono_table(data["chrono"], ir.params, where) if "chrono" in data else ()
        return cls(name=data["name"], family=EQUATIONS,
                   description=data.get("description", ""),
                   citation=data.get("citation", ""), source=source,
                   cell_equations=canonical, init=tuple(sorted(values)), chrono=chrono)

    @classmethod
    def from_toml(cls, path: str | Path) -> Variant:
        """Read and validate a spec file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read variant spec {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"variant spec {path} is not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"malformed TOML in {path}: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain mapping (only the keys that apply to its family)."""
        out: dict[str, Any] = {"name": self.name, "family": self.family}
        for key in ("description", "citation"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.is_equations:
            out["equations"] = list(self.cell_equations)
            if self.init:
                out["init"] = dict(self.init)
            if self.chrono:  # only when declared: other specs' content is unchanged
                keep, write = self.chrono
                out["chrono"] = {"keep": list(keep), **({"write": list(write)} if write else {})}
            return out
        for key in _FAMILY_DEFAULTS[self.family]:
            out[key] = getattr(self, key)
        return out

    def to_toml(self) -> str:
        """The spec as TOML text that :meth:`from_toml` reads back to an equal variant."""
        lines = []
        tables = []
        for key, value in self.to_dict().items():
            if isinstance(value, list):
                items = "".join(f"  {json.dumps(e, ensure_ascii=False)},\n" for e in value)
                lines.append(f"{key} = [\n{items}]")
                continue
            if isinstance(value, dict):
                tables.append(f"\n[{key}]")
                tables += [f"{k} = {json.dumps(v) if isinstance(v, list) else repr(float(v))}"
                           for k, v in value.items()]
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {text}")
        return "\n".join(lines + tables) + "\n"

    # ------------------------------------------------------------- the cell
    @property
    def is_equations(self) -> bool:
        """The spec states its cell as equations (else: switches)."""
        return self.family == EQUATIONS

    @cached_property
    def cell(self):  # -> CellIR (not annotated: .ir imports this module's errors only)
        """The cell's graph (:mod:`gruablate.cells.ir`), from its equations — a switch
        spec's are the ones :meth:`equations` renders."""
        from .ir import build

        return build(list(self.cell_equations) if self.is_equations else self.equations())

    @cached_property
    def zoneout_cell(self):  # -> CellIR
        """:attr:`cell` with zoneout on ``h``: ``h' = m ⊙ h + (1 − m) ⊙ h'``, ``m`` a
        per-step input of the kernels."""
        from .ir import build

        eqs = list(self.cell_equations) if self.is_equations else self.equations()
        return build(eqs, zoneout=True)

    @property
    def input_must_equal_hidden(self) -> bool:
        """Whether the cell reads ``x`` element-wise (``tanh(x)``, ``σ(x + ...)``), so
        that its input size must be its hidden size."""
        return self.is_equations and self.cell.reads_x

    def check_sizes(self, input_size: int, hidden_size: int) -> None:
        """A ``ValueError`` when the cell cannot take these sizes: an equations cell
        that reads ``x`` element-wise (``tanh(x)``, ``σ(x + ...)``) needs I = H."""
        if self.input_must_equal_hidden and input_size != hidden_size:
            raise ValueError(
                f"variant {self.name!r} reads x element-wise, so its input size must equal"
                f" its hidden size; got input size {input_size}, hidden size {hidden_size}")

    @property
    def initial_values(self) -> dict[str, float]:
        """Vector parameters set to a constant after the random initialisation (the
        ``[init]`` table; a switch LSTM's ``forget_bias`` on ``b_f``)."""
        if self.is_equations:
            return dict(self.init)
        if self.family == "lstm" and "b" in (self.gate_inputs or ""):
            return {"b_f": float(self.forget_bias)}
        return {}

    def _check_clashes(self, where: str) -> None:
        def clash(msg: str) -> SpecError:
            return SpecError(f"contradictory spec{where}: {msg}")

        if self.candidate_inputs == "x":
            if self.family == "rnn":
                raise clash("family 'rnn' with candidate_inputs 'x' has no recurrence at all")
            if self.family == "gru" and self.reset != "none":
                raise clash(
                    f"reset {self.reset!r} needs a candidate that sees the state, but"
                    " candidate_inputs is 'x'; use reset = \"none\""
                )
        if self.family == "gru" and self.reset == "tied" and self.update == "uncoupled":
            raise clash(
                "reset 'tied' makes one gate both reset and write, which leaves no"
                " separate write gate for update 'uncoupled'"
            )

    # ------------------------------------------------------------- derivations
    @property
    def state_names(self) -> tuple[str, ...]:
        """The recurrent state: ``("h",)`` or ``("h", "c")`` for the LSTM family (an
        equations cell: ``h`` and then its other states in order of assignment)."""
        if self.is_equations:
            return tuple(self.cell.states)
        return ("h", "c") if self.family == "lstm" else ("h",)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """Pre-activation blocks in packing order: the gates, then the candidate last.

        The candidate is last so that the blocks seeing ``x`` (or ``h``) are always a
        contiguous range, which keeps every product one BLAS call on a packed matrix.
        A switch spec's only: an equations spec's structure is :attr:`cell`.
        """
        if self.is_equations:
            raise ValueError(f"variant {self.name!r} is an equations spec: it has no switch"
                             " blocks (its graph is variant.cell)")
        gx, gh, gb = (
            ("x" in (self.gate_inputs or "")),
            ("h" in (self.gate_inputs or "")),
            ("b" in (self.gate_inputs or "")),
        )
        if self.family == "gru":
            if self.reset == "tied":
                gates = [("f", "write")]
            else:
                gates = [("r", "reset")] if self.reset in ("before", "after") else []
                gates.append(("u", "keep"))
                if self.update == "uncoupled":
                    gates.append(("w", "write"))
            cand = "c"
        elif self.family == "lstm":
            gates = [] if self.coupled_input_forget else [("i", "input")]
            gates += [("f", "forget"), ("o", "output")]
            cand = "g"
        else:
            gates, cand = [], "c"
        out = [Block(n, role, gx, gh, gb) for n, role in gates]
        out.append(Block(cand, "candidate", True, self.candidate_inputs == "xh", True))
        return tuple(out)

    @property
    def gates(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if not b.is_candidate)

    @property
    def candidate(self) -> Block:
        return self.blocks[-1]

    @property
    def reset_gate(self) -> str | None:
        """Name of the gate that resets the state in the candidate, if any."""
        if self.family != "gru" or self.reset == "none":
            return None
        return "f" if self.reset == "tied" else "r"

    @property
    def reset_placement(self) -> str:
        """``before`` (also for tied), ``after`` or ``none``."""
        if self.family != "gru" or self.reset == "none":
            return "none"
        return "after" if self.reset == "after" else "before"

    @property
    def x_blocks(self) -> tuple[Block, ...]:
        """Blocks with an input weight ``W_*``, in packing order (rows of ``W``)."""
        return tuple(b for b in self.blocks if b.sees_x)

    @property
    def h_blocks(self) -> tuple[Block, ...]:
        """Blocks with a recurrent weight ``U_*``, in packing order (rows of ``U``)."""
        return tuple(b for b in self.blocks if b.sees_h)

    @property
    def b_names(self) -> tuple[str, ...]:
        """Bias vectors in packing order (segments of ``b``)."""
        names = [f"b_{b.name}" for b in self.blocks if b.has_bias]
        if self.reset_placement == "after":
            names.append("b_hc")
        return tuple(names)

    @property
    def is_linear_recurrence(self) -> bool:
        """True when ``h_t`` is affine in ``h_{t-1}`` (minGRU): computable by a scan."""
        return (
            self.family == "gru"
            and self.reset == "none"
            and self.candidate_inputs == "x"
            and not any(g.sees_h for g in self.gates)
        )

    def param_shapes(self, input_size: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
        """Named parameter shapes: ``W_*`` (H×I), ``U_*`` (H×H), ``b_*`` (H,)."""
        I, H = input_size, hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        if self.is_equations:
            for name, role in self.cell.params.items():
                shapes[name] = {"W": (H, I), "U": (H, H)}.get(role, (H,))
            return shapes
        for b in self.x_blocks:
            shapes[f"W_{b.name}"] = (H, I)
        for b in self.h_blocks:
            shapes[f"U_{b.name}"] = (H, H)
        for name in self.b_names:
            shapes[name] = (H,)
        return shapes

    def param_count(self, input_size: int, hidden_size: int) -> int:
        """Number of trainable scalars of one layer."""
        total = 0
        for shape in self.param_shapes(input_size, hidden_size).values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def flops(
        self, input_size: int, hidden_size: int, batch: int, seq_len: int, mode: str = "inference"
    ) -> float:
        """Floating-point operations of one layer over a sequence.

        Counts the multiply-adds of every product (2 FLOPs each), as benchmarks
        conventionally do; the element-wise gate work is O(B·H) per step and left out.
        ``mode="train"`` is forward plus backward: the backward pass does two products
        for each forward one (input/state gradient and weight gradient).
        """
        I, H, B, T = input_size, hidden_size, batch, seq_len
        if self.is_equations:
            nx, nh = len(self.cell.w_names), len(self.cell.u_names)
        else:
            nx, nh = len(self.x_blocks), len(self.h_blocks)
        per_step = 2 * B * H * (I * nx + H * nh)
        forward = float(per_step) * T
        if mode == "inference":
            return forward
        if mode == "train":
            return 3.0 * forward
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")

    # --------------------------------------------------------------- equations
    def equations(self, style: str = "text") -> list[str]:
        """The cell's equations, generated from the switches.

        ``style`` is ``"text"`` (Unicode) or ``"latex"``.
        """
        if style not in ("text", "latex"):
            raise ValueError(f"style must be 'text' or 'latex', got {style!r}")
        if self.is_equations:
            if style == "text":
                return list(self.cell_equations)
            from .notation import equation_text, parse_equation

            return [equation_text(parse_equation(e), latex=True) for e in self.cell_equations]
        return _render(self, style == "latex")


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(
            f"variant name {name!r}{where} is not allowed: use 1-64 letters, digits,"
            " '.', '_' or '-', starting with a letter or digit"
        )


_CHRONO_KEYS = ("keep", "write")


def _chrono_table(table: Any, params: dict[str, str], where: str
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An equations spec's ``[chrono]`` table, checked: ``(keep, write)``, each sorted.

    ``keep`` names the biases init "chrono" sets to ``log U(1, tmax − 1)`` (a gate near
    1 keeps memory; at least one), ``write`` those it sets to minus the same values.
    ``params`` is the equations' parameters by role (``CellIR.params``).
    """
    if not isinstance(table, dict):
        raise SpecError(f"key 'chrono'{where} must be a table: keep = [bias names],"
                        " write = [bias names]")
    unknown = sorted(set(table) - set(_CHRONO_KEYS))
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} in [chrono]{where}; known keys:"
                        f" {', '.join(_CHRONO_KEYS)}")
    lists: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for key in _CHRONO_KEYS:
        names = table.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SpecError(f"chrono {key!r}{where} must be a list of bias names (strings),"
                            f" got {names!r}")
        for name in names:
            role = params.get(name)
            if role is None:
                raise SpecError(f"chrono {key} {name!r}{where} is not a parameter of the"
                                " equations")
            if role != "b":
                raise SpecError(f"chrono {key} {name!r}{where}: only biases (b_k) take"
                                " chrono's time scales")
            if name in seen:
                raise SpecError(f"chrono {key} {name!r}{where} is named twice in [chrono]")
            seen.add(name)
        lists[key] = tuple(sorted(names))
    if not lists["keep"]:
        raise SpecError(f"chrono 'keep'{where} must name at least one bias (the gate near 1"
                        " that keeps memory)")
    return lists["keep"], lists["write"]


def _check_choice(key: str, value: Any, where: str) -> None:
    choices = _CHOICES[key]
    if value not in choices:
        raise SpecError(
            f"bad value {value!r} for key {key!r}{where}; choose one of {', '.join(choices)}"
        )


# ----------------------------------------------------------------- rendering
def _render(v: Variant, latex: bool) -> list[str]:
    if latex:
        sig, dot, one = r"\sigma", r" \odot ", "1"
        act_name = {"tanh": r"\tanh", "relu": r"\mathrm{ReLU}", "identity": ""}

        def W(n: str) -> str:
            return f"W_{{{n}}}"

        def U(n: str) -> str:
            return f"U_{{{n}}}"

        def b(n: str) -> str:
            return f"b_{{{n}}}"

        def var(n: str) -> str:
            return {"c_hat": r"\hat{h}", "h_new": "h'", "c_new": "c'"}.get(n, n)

        arrow = " = "
    else:
        sig, dot, one = "σ", " ⊙ ", "1"
        act_name = {"tanh": "tanh", "relu": "ReLU", "identity": ""}

        def W(n: str) -> str:
            return f"W_{n}"

        def U(n: str) -> str:
            return f"U_{n}"

        def b(n: str) -> str:
            return f"b_{n}"

        def var(n: str) -> str:
            return {"c_hat": "ĥ", "h_new": "h'", "c_new": "c'"}.get(n, n)

        arrow = " = "

    def wrap(fn: str, inner: str) -> str:
        if not fn:
            return inner
        if latex:
            return f"{fn}\\left({inner}\\right)"
        return f"{fn}({inner})"

    def pre(block: Block, h_term: str = "h") -> str:
        terms = []
        if block.sees_x:
            terms.append(f"{W(block.name)} x")
        if block.sees_h:
            terms.append(f"{U(block.name)} {h_term}")
        if block.has_bias:
            terms.append(b(block.name))
        return " + ".join(terms) if terms else "0"

    lines = []
    for g in v.gates:
        lines.append(f"{g.name}{arrow}{wrap(sig, pre(g))}")
    act = act_name[v.candidate_activation]
    cand = v.candidate
    placement = v.reset_placement
    if placement == "before":
        rg = v.reset_gate
        inner = pre(cand, h_term=f"({rg}{dot}h)")
    elif placement == "after":
        left = " + ".join([f"{W(cand.name)} x", b(cand.name)])
        inner = f"{left} + r{dot}({U(cand.name)} h + {b('hc')})"
    else:
        inner = pre(cand)
    if v.family == "lstm":
        lines.append(f"g{arrow}{wrap(act, inner)}")
        if v.coupled_input_forget:
            lines.insert(len(lines) - 1, f"i{arrow}{one} {'-' if latex else '−'} f")
        lines.append(f"{var('c_new')}{arrow}f{dot}c + i{dot}g")
        tanh = r"\tanh" if latex else "tanh"
        lines.append(f"{var('h_new')}{arrow}o{dot}{wrap(tanh, var('c_new'))}")
        return lines
    if v.family == "rnn":
        lines.append(f"{var('h_new')}{arrow}{wrap(act, inner)}")
        return lines
    minus = "-" if latex else "−"
    lines.append(f"{var('c_hat')}{arrow}{wrap(act, inner)}")
    ch = var("c_hat")
    if v.reset == "tied":
        combine = f"({one} {minus} f){dot}h + f{dot}{ch}"
    elif v.update == "uncoupled":
        combine = f"u{dot}h + w{dot}{ch}"
    else:
        combine = f"u{dot}h + ({one} {minus} u){dot}{ch}"
    lines.append(f"{var('h_new')}{arrow}{combine}")
    return lines


def spec_fields() -> tuple[str, ...]:
    """All keys a spec file may hold."""
    renamed = {"cell_equations": "equations"}
    return tuple(renamed.get(f.name, f.name) for f in fields(Variant) if f.name != "source")
