"""How long `echovideo --help` and `echovideo plan` take to start, against importing the model (what every
command paid before the package's names became lazy), measured in fresh processes side by side.

    python benchmarks/cli_startup.py            # 5 runs each, medians
    python benchmarks/cli_startup.py --smoke    # 1 run each (CI)
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "echovideo --help": [sys.executable, "-m", "echovideo", "--help"],
    "echovideo plan configs/jobs/demo.yaml": [sys.executable, "-m", "echovideo", "plan", "configs/jobs/demo.yaml"],
    "reference: import the model (every command before)": [sys.executable, "-c", "import echovideo.pipeline"],
}


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one run each")
    runs = 1 if parser.parse_args().smoke else 5
    medians = {name: statistics.median(seconds(argv) for _ in range(runs)) for name, argv in COMMANDS.items()}
    reference = medians["reference: import the model (every command before)"]
    for name, value in medians.items():
        print(f"{name:55s} {value:6.2f} s  {value / reference:5.2f} x the model import")
    print(f"headline: --help starts in {medians['echovideo --help'] / reference:.2f} x, plan in "
          f"{medians['echovideo plan configs/jobs/demo.yaml'] / reference:.2f} x the time of importing the model")


if __name__ == "__main__":
    main()
