"""The built-in variant catalogue (the TOML files of ``variants/``) and user spec files.

The catalogue is the one list of variants: the CLI, the docs and the report read it.
In a source checkout the specs are read from the top-level ``variants/`` folder; an
installed wheel carries the same files as ``gruablate/_catalogue/``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .identity import spec_digest
from .spec import SpecError, Variant

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # gruablate/


def catalogue_dir() -> Path:
    """Folder holding the built-in specs (installed copy first, then the checkout)."""
    for candidate in (_PACKAGE_DIR / "_catalogue", _PACKAGE_DIR.parent / "variants"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    raise RuntimeError(
        "gruablate's variant catalogue is missing: neither gruablate/_catalogue nor"
        " variants/ holds any spec (a broken install?)"
    )


@lru_cache(maxsize=1)
def _builtins() -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for path in sorted(catalogue_dir().glob("*.toml")):
        variant = Variant.from_toml(path)
        if variant.name != path.stem:
            raise SpecError(f"built-in spec {path} is named {variant.name!r}, not {path.stem!r}")
        out[variant.name] = variant
    return out


def list_variants() -> list[str]:
    """Names of the built-in variants, in catalogue order (alphabetical)."""
    return list(_builtins())


def get_variant(name_or_path: str | Path | Variant) -> Variant:
    """A built-in variant by name, or a user's spec file by path (``*.toml``).

    A :class:`Variant` is passed through, so every API that takes a variant takes any
    of the three. A spec that takes a built-in's name but differs from it is refused
    (:class:`SpecError`): names must not mix different cells.
    """
    builtins = _builtins()
    if isinstance(name_or_path, Variant):
        return _not_shadowing(name_or_path, builtins)
    key = str(name_or_path)
    if key in builtins:
        return builtins[key]
    path = Path(key)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise SpecError(f"variant spec file not found: {path}")
        return _not_shadowing(Variant.from_toml(path), builtins)
    raise SpecError(
        f"unknown variant {key!r}; built-ins: {', '.join(builtins)} (or a path to a .toml spec)"
    )


def _not_shadowing(variant: Variant, builtins: dict[str, Variant]) -> Variant:
    # A variant's identity is its content: a user's spec under a built-in's name but
    # with other switches would be averaged with the built-in by anyone reading names.
    builtin = builtins.get(variant.name)
    if builtin is not None and spec_digest(builtin.to_dict()) != spec_digest(variant.to_dict()):
        where = f" in {variant.source}" if variant.source else ""
        raise SpecError(f"spec{where} is named {variant.name!r}, the name of a built-in"
                        " variant with other content; give it a name of its own")
    return variant


def markdown_table(input_size: int = 32, hidden_size: int = 64) -> str:
    """The catalogue as a Markdown table with the rendered equations (used by the README)."""
    lines = [
        f"| variant | equations | params (I={input_size}, H={hidden_size}) | source |",
        "| --- | --- | --- | --- |",
    ]
    for name in list_variants():
        v = get_variant(name)
        eqs = "<br>".join(f"`{e}`" for e in v.equations("text"))
        if v.input_must_equal_hidden:  # such a cell exists only at I = H
            count = f"{v.param_count(hidden_size, hidden_size)} (I = H)"
        else:
            count = str(v.param_count(input_size, hidden_size))
        lines.append(f"| `{name}` | {eqs} | {count} | {v.citation} |")
    return "\n".join(lines)
