"""How long the program takes to evaluate the dev stack under mocks, next to the import floor.

Each figure is the median wall time of fresh Python processes, measured in this run:
  floor     - `import pulumi, pulumi_kubernetes` and the Kubernetes modules the program uses
  program   - the same imports, then the whole program evaluated for the dev stack under mocks
The target is program - floor <= 0.3 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
TARGET_SECONDS = 0.3

FLOOR = "import pulumi, pulumi_kubernetes, pulumi_kubernetes.apps.v1, pulumi_kubernetes.core.v1, pulumi_kubernetes.policy.v1"
PROGRAM = FLOOR + "\nimport harness\nrendered = harness.render('dev')\nassert rendered.kubernetes()"


def median_seconds(code: str) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": ""})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    median_seconds(FLOOR)  # warm the file cache
    floor = median_seconds(FLOOR)
    program = median_seconds(PROGRAM)
    above = program - floor
    print(f"runs per figure:           {RUNS} (median)")
    print(f"baseline, bare imports:    {floor:.3f} s")
    print(f"dev stack under mocks:     {program:.3f} s")
    print(f"program above the floor:   {above:.3f} s (target <= {TARGET_SECONDS:.1f} s: {'met' if above <= TARGET_SECONDS else 'NOT met'})")


if __name__ == "__main__":
    main()
