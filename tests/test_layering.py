"""Layering is one-way: the model never imports parallel/ray_jobs/ray; parallel never imports Ray."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"echovideo": {"parallel", "ray_jobs", "ray"}, "parallel": {"ray_jobs", "ray"}}
ALLOWED_EVERYWHERE = {ROOT / "echovideo" / "cli.py"}  # the one module that ties the wings together


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py") if path not in ALLOWED_EVERYWHERE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("argv", [["--help"], ["plan", "configs/jobs/demo.yaml"], ["export", "--help"]])
def test_commands_that_run_no_model_never_import_one(argv):
    """`--help`, `plan`, and the package's errors load without torch, diffusers or transformers (lazy public
    names), which is what makes them start in well under a second."""
    code = ("import sys\nfrom echovideo.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "import echovideo.errors, parallel.config\n"
            "print('loaded:', sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))")
    shown = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "loaded: []" in shown.stdout, shown.stdout[-500:]
