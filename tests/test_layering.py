"""Layering is one-way: the model never imports parallel/ray_jobs/ray; parallel never imports Ray; inside
ray_jobs, each sub-package imports only those below it (data < store < runtime < tools < api)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"echovideo": {"parallel", "ray_jobs", "ray"}, "parallel": {"ray_jobs", "ray"}}
ALLOWED_EVERYWHERE = {ROOT / "echovideo" / "cli.py"}  # the one module that ties the wings together
RAY_JOBS_ORDER = ("data", "store", "runtime", "tools", "api")  # lowest first


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function (a lazy import is still a dependency)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imported_top_levels(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def ray_jobs_level(module: str) -> int | None:
    """The position in RAY_JOBS_ORDER of the ray_jobs sub-package a module belongs to (None: outside it)."""
    parts = module.split(".")
    if parts[0] != "ray_jobs" or len(parts) < 2 or parts[1] == "__init__":
        return None
    return RAY_JOBS_ORDER.index(parts[1])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py") if path not in ALLOWED_EVERYWHERE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ray_jobs_is_only_its_sub_packages():
    assert sorted(p.stem for p in (ROOT / "ray_jobs").glob("*.py")) == ["__init__", "api"]
    assert sorted(p.name for p in (ROOT / "ray_jobs").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(RAY_JOBS_ORDER[:-1])


def test_ray_jobs_sub_packages_import_only_those_below_them():
    offenders = {}
    for path in (ROOT / "ray_jobs").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = ray_jobs_level(module)
        if own is None:  # ray_jobs/__init__.py
            continue
        upward = sorted(m for m in imported_modules(path) if (ray_jobs_level(m) or 0) > own)
        if upward:
            offenders[module] = upward
    assert offenders == {}


def test_the_layering_rule_catches_an_upward_import(tmp_path):
    """The check itself: a data module that imported the runtime would be found."""
    planted = tmp_path / "bad.py"
    planted.write_text("def f():\n    from ray_jobs.runtime.engine import run_job\n")
    assert max(ray_jobs_level(m) for m in imported_modules(planted)) > RAY_JOBS_ORDER.index("data")


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
