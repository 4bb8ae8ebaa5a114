"""How long the program takes to evaluate the dev stack under mocks, next to the import floor.

Each run is a fresh Python process that times, with perf_counter:
  floor    - `import pulumi, pulumi_kubernetes`: the Pulumi runtime with its mocks, and the
             Kubernetes modules the program declares objects from
  program  - then importing the program and evaluating the whole dev stack under mocks (the key
             material comes from the consul-keys provider plugin, so it is not part of it)
Both are medians over the runs of this invocation. The target is program <= 0.3 s above the floor.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 11
TARGET_SECONDS = 0.3

ONE_RUN = """
import json, time
start = time.perf_counter()
import pulumi, pulumi.runtime.mocks
for module in ("apps.v1", "batch.v1", "core.v1", "meta.v1", "networking.v1", "policy.v1"):
    __import__(f"pulumi_kubernetes.{module}")
imported = time.perf_counter()
import harness
rendered = harness.render("dev", real_material=False)
done = time.perf_counter()
objects = len(rendered.kubernetes())
print(json.dumps({"floor": imported - start, "program": done - imported, "objects": objects}))
"""


def one_run() -> dict[str, float]:
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'unit'}", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", ONE_RUN], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    one_run()  # warm the file cache
    runs = [one_run() for _ in range(RUNS)]
    floor = statistics.median(r["floor"] for r in runs)
    program = statistics.median(r["program"] for r in runs)
    print(f"runs:                                   {RUNS} fresh processes (median), {runs[0]['objects']:.0f} objects")
    print(f"baseline, import pulumi + kubernetes:   {floor:.3f} s")
    print(f"program: import and evaluate dev stack: {program:.3f} s above that floor")
    print(f"target <= {TARGET_SECONDS:.1f} s above the floor: {'met' if program <= TARGET_SECONDS else 'NOT met'}")


if __name__ == "__main__":
    main()
