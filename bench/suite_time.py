"""The suite's cost: a fresh clone's `bash .ci/run` (install, linters, every test), timed, with pytest's slowest
tests, so that each change can see what it added.

    .venv/bin/python bench/suite_time.py [--smoke] [--fast]   # prints the figure, writes bench/results/suite_time.json

The clone gets an empty uv cache, as CI's machine has; what apt-get installed here (Chromium, SLURM) is not
installed again, which a fresh CI machine does (about a minute). ``--fast`` times `make test-fast` in the same
venv instead; ``--smoke`` times the fast tier's first test file only, to check the script itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, env, smoke, write_result

BUDGET_S = {"full": 25 * 60, "fast": 3 * 60}
DURATION = re.compile(r"^(\d+\.\d+)s (call|setup|teardown)\s+(\S+)$")
SUMMARY = re.compile(r"=+ (.*) in ([\d.]+)s")


def slowest(output: str) -> list[dict]:
    """pytest's ``--durations`` lines: seconds, phase and test, slowest first."""
    found = [m.groups() for line in output.splitlines() if (m := DURATION.match(line.strip()))]
    return [{"seconds": float(s), "phase": phase, "test": test} for s, phase, test in found]


def run_timed(cmd: list[str], cwd: Path, **extra_env: str) -> tuple[float, str, int]:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return time.perf_counter() - start, proc.stdout, proc.returncode


def main() -> None:
    kind = "fast" if "--fast" in sys.argv[1:] or smoke() else "full"
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "full":
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
            seconds, output, code = run_timed(["bash", ".ci/run"], clone, UV_CACHE_DIR=str(Path(tmp) / "uv-cache"))
        else:  # the venv as it is (-o: not reinstalled), the tier's selection from the Makefile
            selection = ["PYTEST_ARGS=tests/test_stats.py"] if smoke() else []
            seconds, output, code = run_timed(["make", "-s", "-o", ".venv/.installed", "test-fast", *selection], REPO)
    tests = SUMMARY.findall(output)
    result = {
        "kind": kind,
        "command": "bash .ci/run (fresh clone)" if kind == "full" else "make test-fast",
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 1),
        "budget_s": BUDGET_S[kind],
        "within_budget": seconds <= BUDGET_S[kind],
        "passed": code == 0,
        "pytest_summary": tests[-1][0] if tests else None,
        "pytest_s": float(tests[-1][1]) if tests else None,
        "slowest": slowest(output)[:25],
    }
    for row in result["slowest"][:10]:
        print(f"  {row['seconds']:7.1f} s  {row['phase']:8s} {row['test']}")
    write_result(
        "suite_time" if kind == "full" else "suite_time_fast",
        result,
        f"{result['command']}: {result['minutes']} min ({'within' if result['within_budget'] else 'over'} the "
        f"{BUDGET_S[kind] // 60}-minute budget); pytest: {result['pytest_summary']}",
    )
    if code != 0:
        raise SystemExit(output[-5000:])


if __name__ == "__main__":
    main()
