"""Every command in the README is a test. The `bash` and `python` blocks are read from README.md; every
command's flags are checked against the CLI's own parser (pip extras against pyproject.toml, benchmark flags
against the script); every command not tagged `# [needs ...]` (a GPU, the released weights, a cluster, an
object store) then runs as written, in README order, in a scratch folder holding copies of `configs/` and
`echovideo/assets/`, and must exit 0 without a traceback."""

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import own_processes
import pytest
import tomllib

from echovideo.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
NEEDS = re.compile(r"#.*\[needs ([^\]]+)\]")
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Snippet:
    language: str  # bash: one logical line (continuations joined); python: a whole block
    text: str
    line: int  # where it starts in README.md
    needs: str | None  # what it needs that CI has not, from its `# [needs ...]` tag

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text.splitlines()[0][:90]}"


def readme_snippets() -> list[Snippet]:
    text = (ROOT / "README.md").read_text()
    snippets = []
    for block in BLOCK.finditer(text):
        first = text[:block.start(2)].count("\n") + 1
        body = block.group(2)
        if block.group(1) == "python":
            tag = NEEDS.search(body.splitlines()[0])
            snippets.append(Snippet("python", body, first, tag.group(1) if tag else None))
            continue
        logical, start = "", first
        for number, line in enumerate(body.splitlines(), first):
            logical, start = (logical + "\n" + line, start) if logical else (line, number)
            if line.endswith("\\"):
                continue
            if logical.strip() and not logical.lstrip().startswith("#"):
                tag = NEEDS.search(logical)
                snippets.append(Snippet("bash", logical, start, tag.group(1) if tag else None))
            logical = ""
    return snippets


SNIPPETS = readme_snippets()
COMMANDS = [s for s in SNIPPETS if s.language == "bash"]


def parts(snippet: Snippet) -> list[list[str]]:
    """The command's `&&`-joined parts as argument lists, environment assignments dropped."""
    tokens = shlex.split(snippet.text.replace("\\\n", " "), comments=True)
    split, current = [], []
    for token in tokens + ["&&"]:
        if token == "&&":
            split.append(current)
            current = []
        elif current or not ENV_ASSIGNMENT.match(token):
            current.append(token)
    return [part for part in split if part]


def check_echovideo_flags(args: list[str], where: Snippet) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `echovideo {' '.join(args)}` is refused by the CLI's parser")


def check_pip(args: list[str], where: Snippet) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert args[:2] == ["pip", "install"], where
    for argument in args[2:]:
        if argument.startswith(".["):
            missing = set(argument[2:-1].split(",")) - extras
            assert not missing, f"{where}: no extra {sorted(missing)} in pyproject.toml"


def check_benchmark(args: list[str], where: Snippet) -> None:
    script = ROOT / args[1]
    assert script.is_file(), f"{where}: no {args[1]}"
    source = script.read_text()
    for flag in (a for a in args[2:] if a.startswith("--")):
        assert f'"{flag}"' in source, f"{where}: {args[1]} takes no {flag}"


def check_part(args: list[str], where: Snippet) -> None:
    """One command's syntax and flags, without running it."""
    program = args[0]
    if program == "echovideo":
        check_echovideo_flags(args[1:], where)
    elif program == "torchrun":
        check_echovideo_flags(args[args.index("echovideo") + 1:], where)  # torchrun ... -m echovideo ...
    elif program == "ray":
        assert args[1:3] == ["job", "submit"] and "--" in args, where
        check_part(args[args.index("--") + 1:], where)
    elif program == "pip":
        check_pip(args, where)
    elif program == "python" and args[1].startswith("benchmarks/"):
        check_benchmark(args, where)
    elif program == "python" and args[1:3] == ["-m", "pytest"]:
        markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
        for expression in args[args.index("-m", 2) + 1:] if "-m" in args[2:] else []:
            assert all(word in ("not", "and", "or") or any(m.startswith(f"{word}:") for m in markers)
                       for word in expression.split()), f"{where}: unknown marker in {expression!r}"
    elif program == "python" and args[1] == "-c":
        compile(args[2], str(where), "exec")
    else:
        pytest.fail(f"{where}: this test does not know how to check `{program}`; teach it (tests/test_readme.py)")


@pytest.mark.parametrize("snippet", COMMANDS, ids=[f"line{s.line}" for s in COMMANDS])
def test_every_readme_command_has_valid_syntax_and_flags(snippet):
    for args in parts(snippet):
        check_part(args, snippet)


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.language == "python"],
                         ids=lambda s: f"line{s.line}")
def test_every_readme_python_block_compiles_and_imports_real_names(snippet):
    tree = ast.parse(snippet.text, str(snippet))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{snippet}: {node.module} has no {alias.name}"


def test_the_readme_has_the_quickstart_and_tags_what_ci_cannot_run():
    quickstart = [s for s in COMMANDS if "echovideo run configs/jobs/demo.yaml" in s.text and "pip install" in s.text]
    assert quickstart and quickstart[0].needs is None
    assert all(s.needs for s in COMMANDS if "ckpts" in s.text or "JOB.yaml" in s.text or "s3://" in s.text)


def runnable(snippet: Snippet) -> list[str]:
    """What runs of a command: its echovideo and `python -c` parts (pip installs are CI's own first step; the
    benchmarks and the suite itself are run by tests/test_benchmarks.py and CI)."""
    if snippet.needs:
        return []
    return [" ".join(shlex.quote(a) for a in args) for args in parts(snippet)
            if args[0] == "echovideo" or args[:2] == ["python", "-c"]]


def run_in(folder: Path, argv: list[str], where: Snippet, env: dict) -> str:
    """Run as a user would, in a session of its own; the processes it leaves (an embedded Ray under
    RAY_TMPDIR) are stopped by their folder, also if this test is killed."""
    process = subprocess.Popen(argv, cwd=folder, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        own_processes.stop_group(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"{where}: still running after 900 s\n{output[-3000:]}")
    assert process.returncode == 0, f"{where}: exit {process.returncode}\n{output[-3000:]}"
    assert "Traceback" not in output, f"{where}: printed a traceback\n{output[-3000:]}"
    return output


@pytest.mark.slow  # every README command end to end, ~100 s (CI runs it: -m slow)
def test_every_untagged_readme_command_runs_as_written_in_order(tmp_path, tiny_root):
    """Quickstart first (it makes out/demo, which eval and export then read), then every block in order."""
    folder = tmp_path / "user"
    shutil.copytree(ROOT / "configs", folder / "configs")
    shutil.copytree(ROOT / "echovideo" / "assets", folder / "echovideo" / "assets")
    ray_temp = tempfile.mkdtemp(prefix="ev-readme-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    keeper = own_processes.guard(path=ray_temp)
    env = {**os.environ, "ECHOVIDEO_CACHE": str(tiny_root.parent), "RAY_TMPDIR": ray_temp}
    env.pop("RAY_ADDRESS", None)
    ran = []
    try:
        for snippet in SNIPPETS:
            if snippet.language == "python" and not snippet.needs:
                (folder / "example.py").write_text(snippet.text)
                ran.append(run_in(folder, [sys.executable, "example.py"], snippet, env))
            for command in runnable(snippet) if snippet.language == "bash" else []:
                ran.append(run_in(folder, ["bash", "-c", command], snippet, env))
    finally:
        own_processes.stop(own_processes.processes_under(ray_temp))
        own_processes.dismiss(keeper)
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert len(ran) >= 10
    assert sorted(p.name for p in (folder / "out" / "demo" / "videos").iterdir())  # the Quickstart's clips
    assert (folder / "out" / "demo" / "eval-by-identity.json").is_file()
    assert (folder / "out" / "from-dataset" / "manifest.parquet").is_file()
    assert (folder / "out" / "demo-shards" / "shard-000000.tar").is_file()
