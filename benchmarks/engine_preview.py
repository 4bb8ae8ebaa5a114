"""The real engine on the dev stack, next to the plain-YAML floor of the same objects (make bench).

For each of RUNS interleaved rounds, in fresh stacks on a local backend, render mode (no cluster):
  program - this program: `preview` of a new stack, the first `up`, then a no-change `preview`
  floor   - the same 21 objects, as the YAML this program renders, declared through
            pulumi_kubernetes.yaml.v2.ConfigGroup: the same three operations
It prints min, median and max of each, and the ratio of the medians (the goal of issue-level work
on speed is at most 1.1). A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import run_stack  # noqa: E402
from pulumi import automation as auto  # noqa: E402

RUNS = 7
OPERATIONS = ("preview", "first up", "no-change preview")


def floor_stack(home: Path, files: list[str]) -> auto.Stack:
    def program() -> None:
        import pulumi_kubernetes as k8s

        k8s.yaml.v2.ConfigGroup("floor", files=files)

    env = run_stack._engine_env(f"file://{home / 'state'}", run_stack.RENDER_PASSPHRASE)
    (home / "state").mkdir(parents=True, exist_ok=True)
    (home / "work").mkdir(parents=True, exist_ok=True)
    stack = auto.create_or_select_stack(
        stack_name="floor",
        project_name="floor",
        program=program,
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(home / "work"),
            env_vars=env,
            project_settings=auto.ProjectSettings(name="floor", runtime="python"),
        ),
    )
    stack.set_config("kubernetes:renderYamlToDirectory", auto.ConfigValue(str(home / "out")))
    return stack


def timed(operation: Callable[[], object]) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


def three(stack: auto.Stack) -> list[float]:
    return [
        timed(lambda: stack.preview(color="never")),
        timed(lambda: stack.up(color="never")),
        timed(lambda: stack.preview(color="never", expect_no_changes=True)),
    ]


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    try:
        source = scratch / "source"
        run_stack.render_stack("dev", source, source / "out").up(color="never")
        files = sorted(str(p) for p in (source / "out" / "1-manifest").glob("*.yaml"))
        results: dict[str, list[list[float]]] = {"program": [], "floor": []}
        for round_ in range(RUNS):
            home = scratch / f"round-{round_}"
            results["program"].append(three(run_stack.render_stack("dev", home / "program", home / "program" / "out")))
            results["floor"].append(three(floor_stack(home / "floor", files)))
        print(f"runs: {RUNS} interleaved rounds, fresh stacks, render mode, {len(files)} objects")
        for index, name in enumerate(OPERATIONS):
            row = {who: sorted(r[index] for r in runs) for who, runs in results.items()}
            medians = {who: statistics.median(v) for who, v in row.items()}
            print(
                f"{name:18} program {row['program'][0]:.2f}/{medians['program']:.2f}/{row['program'][-1]:.2f} s   "
                f"floor {row['floor'][0]:.2f}/{medians['floor']:.2f}/{row['floor'][-1]:.2f} s   "
                f"ratio {medians['program'] / medians['floor']:.2f}   (min/median/max)"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
