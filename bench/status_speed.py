"""`koaml status` on a 40-run experiment (40 runs x 24 benchmarks, ~1,100 steps): wall time of the whole
command, median of alternating repeats, with and without half of the steps done (the files it reads).

    .venv/bin/python bench/status_speed.py [--smoke]   # prints the figure, writes bench/results/status_speed.json
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, alternate, median, repeats, timed, write_result
from plan_dag import BENCHMARKS, RUNS, koaml_workdir

TARGET_S = 2.0


def timed_status(workdir: Path) -> float:
    return timed([BIN / "koaml", "status"], cwd=workdir)[0]


def half_done(workdir: Path) -> Path:
    """Outputs and logs for every other run, as a half-finished experiment has them."""
    for i in range(0, RUNS, 2):
        for folder in (f"results/data/run{i}", f"results/runs/run{i}/trained", f"results/runs/run{i}/merged"):
            (workdir / folder).mkdir(parents=True, exist_ok=True)
        for b in range(BENCHMARKS):
            (workdir / f"results/eval/run{i}/gen_{b}").mkdir(parents=True, exist_ok=True)
    log = workdir / "logs/train/run1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Traceback ...\nRuntimeError: out of memory\n")
    return workdir


def main() -> None:
    rounds = repeats(5)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = koaml_workdir(Path(tmp) / "fresh")
        half = half_done(koaml_workdir(Path(tmp) / "half"))
        timed_status(fresh)  # warm caches (lm-eval task index, Python bytecode)
        times = alternate({"fresh": lambda: timed_status(fresh), "half_done": lambda: timed_status(half)}, rounds)
    result = {"runs": RUNS, "benchmarks": BENCHMARKS, "repeats": rounds, "all_s": times, "target_s": TARGET_S}
    result.update({name: median(values) for name, values in times.items()})
    result["target_met"] = max(result["fresh"], result["half_done"]) < TARGET_S
    write_result(
        "status_speed",
        result,
        f"{result['fresh']:.2f} s with nothing done, {result['half_done']:.2f} s half done (target < {TARGET_S} s; "
        f"median of {rounds})",
    )


if __name__ == "__main__":
    main()
