"""The ``gruablate`` command line: thin Click wrappers over the Python API.

Each command lives in its own module; this file only assembles the groups. A command
module parses options, calls the API and prints — it holds no logic the API lacks.
"""

from __future__ import annotations

import importlib
import warnings

import click

from ..store import DamagedRecordWarning

_show_warning = warnings.showwarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # A warning about the user's files is news for the user, not a code location.
    if issubclass(category, DamagedRecordWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gruablate")
def main() -> None:
    """Benchmark and ablate gated recurrent cells (GRU, its ablations, LSTM)."""
    warnings.showwarning = _one_line_warning


@main.group()
def run() -> None:
    """Train, sweep and benchmark."""


# (module, attribute, group) for every command; a module that is absent is skipped so
# that the CLI only offers what exists.
_COMMANDS = [
    ("gruablate.cli.variants", "variants", main),
    ("gruablate.cli.train", "train", run),
    ("gruablate.cli.sweep", "sweep", run),
    ("gruablate.cli.bench", "bench", run),
    ("gruablate.cli.report", "report", main),
]

for _module, _attr, _group in _COMMANDS:
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise
        continue
    _group.add_command(getattr(_mod, _attr))
