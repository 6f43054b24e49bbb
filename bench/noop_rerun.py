"""No-op rerun: `snakemake --cores 2` on the finished demo, which prints "Nothing to be done".

The demo runs once in a scratch copy of the workflow (shrunk to 5 training steps and 20 questions per
benchmark: only the rerun is timed), or a finished one is copied (``$KOAML_BENCH_FINISHED``: the tests pass the
demo they ran), then the rerun is timed, alternating with the same no-op rerun of a bare one-rule Snakefile
(Snakemake's own floor: interpreter, imports, DAG, file checks).

    .venv/bin/python bench/noop_rerun.py [--smoke]    # writes bench/results/noop_rerun.json
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, alternate, copy_workflow, repeats, run, smoke, timed, timings, write_result

SHRINK = ["recipe_overrides={training: {max_steps: 5}}", "benchmark_overrides={limit: 20}"]
SMOKE_EXPERIMENT = """experiment: smoke
base_models:
  tiny: {build: resources/demo/tiny_model.yaml}
runs:
  tiny-full: {base: tiny, recipe: config/recipes/demo_full.yaml}
benchmarks:
  - config/benchmarks/demo_arith_mc.yaml
"""
TARGET_S = 3.0


def snakemake(workdir: Path, *args: str) -> float:
    elapsed, proc = timed([BIN / "snakemake", "--cores", "2", *args], cwd=workdir)
    if "Nothing to be done" not in proc.stdout + proc.stderr:
        raise SystemExit(f"the rerun in {workdir} was not a no-op:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    rounds = repeats(5)
    finished = os.environ.get("KOAML_BENCH_FINISHED")
    with TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        if finished:
            shutil.copytree(finished, demo, symlinks=True)
            config, experiment = [], f"the finished demo of {finished}"
        else:
            copy_workflow(demo)
            if smoke():
                (demo / "config/config.yaml").write_text(SMOKE_EXPERIMENT)
            config = ["--config", *SHRINK]  # the rerun passes the same overrides, or the changed params rerun jobs
            run([BIN / "snakemake", "--cores", "2", *config], cwd=demo)
            experiment = (
                "smoke (1 run, 1 benchmark)" if smoke() else "demo (3 runs, 2 benchmarks), shrunk: " + "; ".join(SHRINK)
            )
        jobs = len(list((demo / ".snakemake/metadata").iterdir()))
        bare = Path(tmp) / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text('rule all:\n    output: "done.txt"\n    shell: "touch {output}"\n')
        run([BIN / "snakemake", "--cores", "2"], cwd=bare)
        snakemake(demo, *config), snakemake(bare)  # warm the page cache and bytecode
        times = alternate({"koaml": lambda: snakemake(demo, *config), "bare": lambda: snakemake(bare)}, rounds)
    result = {
        "experiment": experiment,
        "output_files": jobs,
        **timings(times, rounds),
        "target_s": TARGET_S,
    }
    result["target_met"] = result["koaml_s"] < TARGET_S
    write_result(
        "noop_rerun",
        result,
        f"{result['koaml_s']:.2f} s (target < {TARGET_S:.0f} s; median of {rounds}, alternating; a bare one-rule "
        f"Snakefile: {result['bare_s']:.2f} s)",
    )


if __name__ == "__main__":
    main()
