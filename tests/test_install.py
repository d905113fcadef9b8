"""Installing an extra never swaps the user's torch or OpenCV: pip's own resolver, asked what the `face` and
`cluster`, `data` and `eval` extras would install from scratch, lists no torch, torchvision, CUDA wheel or second OpenCV."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.slow  # pip resolves each extra (CI runs them: -m slow)

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
NEVER = re.compile(r"^(torch|torchvision|torchaudio|nvidia-.*|triton|opencv-python|opencv-contrib-python)$")


@pytest.mark.parametrize("extra", ["face", "cluster", "data", "eval"])
def test_an_extra_resolves_without_torch_or_a_second_opencv(extra):
    requirements = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"][extra]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", "-", *requirements], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and re.search(r"(?i)connection|network|no matching distribution", done.stderr):
        pytest.skip(f"no package index here: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(done.stdout)["install"]}
    assert not {name for name in names if NEVER.match(name)}, sorted(names)
