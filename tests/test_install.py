"""A plain, non-editable `pip install .` into a fresh virtual environment carries the catalogue."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import gruablate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_has_the_catalogue(tmp_path):
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The run-time dependencies (numba, numpy, ...) come from this interpreter; a path
    # in a .pth file is added without processing the .pth files inside it, so the
    # editable install of the checkout stays invisible to the fresh environment.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_gruablate_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--no-deps", str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    probe = (
        "import json, gruablate; from gruablate.cells.catalogue import catalogue_dir;"
        "print(json.dumps([gruablate.__file__, str(catalogue_dir()), gruablate.list_variants(),"
        " gruablate.get_variant('mgu').equations()]))"
    )
    out = subprocess.run(
        [py, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    module_file, cat_dir, names, equations = json.loads(out)
    assert module_file.startswith(str(env_dir)), module_file
    assert cat_dir.startswith(str(env_dir)) and cat_dir.endswith("_catalogue")
    assert names == gruablate.list_variants()
    assert equations == gruablate.get_variant("mgu").equations()
    assert sys.version_info >= (3, 10)
