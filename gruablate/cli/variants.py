"""``gruablate variants list|show``: the catalogue on the command line."""

from __future__ import annotations

import json

import click

from ..backends import BACKENDS, get_backend
from ..cells.catalogue import get_variant, list_variants
from ..cells.spec import SpecError, Variant
from ..vocabulary import DTYPES


def _load(name_or_path: str) -> Variant:
    try:
        return get_variant(name_or_path)
    except SpecError as exc:
        raise click.UsageError(str(exc)) from None


def _switches(v: Variant) -> dict:
    d = v.to_dict()
    for key in ("name", "description", "citation"):
        d.pop(key, None)
    return d


@click.group()
def variants() -> None:
    """List and show the variants (built-in or your own spec files)."""


@variants.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--input-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="I for the parameter count.")
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=1),
              help="H for the parameter count.")
def list_cmd(as_json: bool, input_size: int, hidden: int) -> None:
    """Table of the built-in variants: family, parameters, equations and source."""
    rows, square = [], set()
    for name in list_variants():
        v = get_variant(name)
        if v.input_must_equal_hidden:
            square.add(name)
        rows.append(
            {
                "name": name,
                "family": v.family,
                "switches": _switches(v),
                # a cell that reads x element-wise exists only at I = H
                "params": v.param_count(hidden if v.input_must_equal_hidden else input_size,
                                        hidden),
                "equations": v.equations("text"),
                "description": v.description,
                "citation": v.citation,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gruablate variants (params at I={input_size}, H={hidden})")
    for col in ("name", "family", "params", "equations", "description", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["family"],
                      f"{r['params']}{' (I = H)' if r['name'] in square else ''}",
                      "\n".join(r["equations"]),
                      r["description"], r["citation"])
    Console().print(table)


@variants.command("show")
@click.argument("name_or_file")
@click.option("--input-size", type=click.IntRange(min=1),
              help="I for the parameter count [32; H for a cell reading x element-wise].")
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=1),
              help="H for the parameter count.")
@click.option("--latex", is_flag=True, help="Print the equations as LaTeX.")
@click.option("--kernel", type=click.Choice(BACKENDS),
              help="Print the kernel source generated for this backend instead.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="dtype of the kernel source (with --kernel).")
@click.option("--backward", is_flag=True,
              help="Also print the derived gradient equations and the schedule.")
def show_cmd(name_or_file: str, input_size: int | None, hidden: int, latex: bool,
             kernel: str | None, dtype: str, backward: bool) -> None:
    """Equations, switches and parameter count of one variant (name or .toml file).

    With --kernel, the Python source generated for it instead: the CPU module Numba
    compiles, or the CUDA cell kernels (text only: no GPU or numba-cuda needed).
    """
    v = _load(name_or_file)
    if kernel is not None:
        try:
            text = get_backend(kernel).kernel_source(v, dtype)
        except ValueError as exc:  # this backend has no kernels for the spec
            raise click.UsageError(f"--kernel {kernel}: {exc}") from None
        click.echo(text, nl=False)
        return
    click.echo(f"{v.name} — {v.description}" if v.description else v.name)
    if v.citation:
        click.echo(f"source: {v.citation}")
    click.echo("\nequations:")
    for line in v.equations("latex" if latex else "text"):
        click.echo(f"  {line}")
    if v.is_equations:
        click.echo(f"\nstates: {', '.join(v.state_names)}")
    else:
        click.echo("\nswitches:")
        for key, value in _switches(v).items():
            click.echo(f"  {key} = {value}")
    if input_size is None:
        input_size = hidden if v.input_must_equal_hidden else 32
    if v.input_must_equal_hidden and input_size != hidden:
        raise click.UsageError(f"--input-size {input_size}: {v.name} reads its input"
                               f" element-wise, so its input size must equal --hidden"
                               f" ({hidden})")
    click.echo(f"\nparameters at I={input_size}, H={hidden}:")
    roles = {"W": "input weights", "U": "recurrent weights", "b": "bias", "p": "diagonal"}
    kinds = v.cell.params
    for pname, shape in v.param_shapes(input_size, hidden).items():
        role = roles.get(kinds.get(pname, pname[0]), "")
        click.echo(f"  {pname:6s} {'×'.join(map(str, shape)):>9s}  {role}")
    click.echo(f"  total  {v.param_count(input_size, hidden)}")
    per_row = v.flops(input_size, hidden, batch=1, seq_len=1)
    click.echo(f"\nFLOPs of the products per step and batch row: {per_row:.0f} (forward),"
               f" {3 * per_row:.0f} (training)")
    if backward:
        from ..cells.ir import explain

        click.echo("\nschedule:")
        for line in explain(v.cell, backward=True):
            click.echo(f"  {line}" if line else "")
    if v.is_linear_recurrence:
        click.echo("\nthe recurrence is linear in h: computable by a scan over time")

