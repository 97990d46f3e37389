"""`make lint` checks the layering that pyproject.toml writes down as import-linter contracts: an import
that breaks a rule fails the lint and is named, even when it hides inside a function."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # what `make lint` runs


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the package and its pyproject.toml, free to break."""
    shutil.copytree(ROOT / "src" / "sweeplab", tmp_path / "src" / "sweeplab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def lint_imports(project: Path, contract: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "COLUMNS": "200"}  # the copy, not the installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(project / "pyproject.toml"),
                           "--contract", contract], cwd=project, env=env, capture_output=True, text=True, timeout=120)


def add_lazy_import(module: Path, statement: str) -> None:
    """The import inside a function, where a hurried fix would put it."""
    module.write_text(module.read_text() + f"\n\ndef _added_by_the_test():\n    {statement}\n")


def test_the_training_contract_holds_and_breaks_on_a_lazy_mlflow_import(project):
    clean = lint_imports(project, "training-standalone")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "1 kept, 0 broken" in clean.stdout

    add_lazy_import(project / "src" / "sweeplab" / "models" / "summary.py", "import mlflow")
    broken = lint_imports(project, "training-standalone")
    assert broken.returncode != 0
    assert "never imports sweep, tracking, Ray or MLflow BROKEN" in broken.stdout
    assert "sweeplab.models.summary -> mlflow" in broken.stdout


@pytest.mark.parametrize(
    "module, statement, contract, named",
    [
        ("train.py", "from sweeplab.sweep import plan", "training-standalone", "sweeplab.train -> sweeplab.sweep.plan"),
        ("data/batches.py", "from sweeplab.tracking import store", "models-data-standalone",
         "sweeplab.data.batches -> sweeplab.tracking.store"),
        ("models/shapes.py", "from sweeplab.config import schema", "models-data-standalone",
         "sweeplab.models.shapes -> sweeplab.config.schema"),
        ("config/schema.py", "from sweeplab.sweep import space", "config-leaf",
         "sweeplab.config.schema -> sweeplab.sweep.space"),
        ("registry.py", "from sweeplab import train", "layers", "sweeplab.registry -> sweeplab.train"),
    ],
)
def test_each_contract_names_an_import_that_breaks_it(project, module, statement, contract, named):
    before = lint_imports(project, contract)
    assert named not in before.stdout, before.stdout

    add_lazy_import(project / "src" / "sweeplab" / module, statement)
    after = lint_imports(project, contract)
    assert after.returncode != 0
    assert "BROKEN" in after.stdout and named in after.stdout, after.stdout
