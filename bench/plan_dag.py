"""DAG planning time: `snakemake -n` on a generated experiment versus a bare Snakefile with the same DAG
shape and trivial rules, timed alternately. Two shapes: 40 runs x 24 benchmarks (~1,000 jobs), and with
--sweep one run swept over a 10 x 10 x 10 grid (1,000 runs, ~5,000 jobs; the sweep path of the config).

    .venv/bin/python bench/plan_dag.py [--sweep] [--smoke]   # writes bench/results/plan_dag[_sweep].json
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, REPO, alternate, copy_workflow, repeats, smoke, timed, timings, write_result

SWEEP = "--sweep" in sys.argv
SWEEP_GRID = (2, 2, 2) if smoke() else (10, 10, 10)
if SWEEP:
    RUNS, BENCHMARKS = SWEEP_GRID[0] * SWEEP_GRID[1] * SWEEP_GRID[2], 1
else:
    RUNS, BENCHMARKS = (2, 2) if smoke() else (40, 24)

BARE_SNAKEFILE = f"""
RUNS = [f"run{{i}}" for i in range({RUNS})]
MODELS = ["base"] + RUNS
BENCHES = [f"bench{{i}}" for i in range({BENCHMARKS})]
rule all:
    input: "results/compare/summary.csv"
rule base:
    output: directory("results/base/base/model")
    shell: "mkdir -p {{output}}"
rule run_config:
    output: "results/runs/{{run}}/config.yaml"
    shell: "touch {{output}}"
rule bench_config:
    output: "results/benchmarks/{{bench}}.yaml"
    shell: "touch {{output}}"
rule prepare:
    input: "results/runs/{{run}}/config.yaml", "results/base/base/model"
    output: directory("results/data/{{run}}")
    shell: "mkdir -p {{output}}"
rule train:
    input: "results/runs/{{run}}/config.yaml", "results/data/{{run}}"
    output: directory("results/runs/{{run}}/trained")
    shell: "mkdir -p {{output}}"
rule merge:
    input: "results/runs/{{run}}/trained"
    output: directory("results/runs/{{run}}/merged")
    shell: "mkdir -p {{output}}"
def model_dir(w):
    return "results/base/base/model" if w.model == "base" else f"results/runs/{{w.model}}/merged"
rule evaluate:
    input: model_dir, "results/benchmarks/{{bench}}.yaml"
    output: directory("results/eval/{{model}}/{{bench}}")
    shell: "mkdir -p {{output}}"
rule compare:
    input: expand("results/eval/{{model}}/{{bench}}", model=MODELS, bench=BENCHES)
    output: "results/compare/summary.csv"
    shell: "touch {{output}}"
"""


def koaml_workdir(root: Path) -> Path:
    copy_workflow(root)
    benches = []
    for i in range(BENCHMARKS):
        path = root / f"config/benchmarks/gen_{i}.yaml"
        path.write_text((REPO / "config/benchmarks/demo_arith_mc.yaml").read_text())
        benches.append(f"config/benchmarks/gen_{i}.yaml")
    if SWEEP:
        seeds, steps, ranks = (list(range(1, n + 1)) for n in SWEEP_GRID)
        runs = (
            "  grid:\n    base: tiny\n    recipe: config/recipes/demo_lora.yaml\n    sweep:\n"
            f"      training.seed: {seeds}\n      training.max_steps: {steps}\n      peft.lora_r: {ranks}\n"
            f"max_runs: {RUNS}"
        )
    else:
        runs = "\n".join(
            f"  run{i}: {{base: tiny, recipe: config/recipes/demo_lora.yaml, overrides: {{training: {{seed: {i}}}}}}}"
            for i in range(RUNS)
        )
    (root / "config/config.yaml").write_text(
        "experiment: bench\nbase_models:\n  tiny: {build: resources/demo/tiny_model.yaml}\nruns:\n"
        + runs
        + "\nbenchmarks:\n"
        + "\n".join(f"  - {b}" for b in benches)
        + "\n"
    )
    return root


def plan(workdir: Path) -> tuple[float, int]:
    elapsed, out = timed([BIN / "snakemake", "-n", "--cores", "1", "--quiet", "rules"], cwd=workdir)
    totals = [int(line.split()[-1]) for line in out.stdout.splitlines() if line.startswith("total")]
    jobs = totals[0]  # the job-stats table's total
    return elapsed, jobs


def main() -> None:
    rounds = repeats(3 if SWEEP else 5)
    jobs = {}

    def timed_plan(name: str, workdir: Path) -> float:
        elapsed, jobs[name] = plan(workdir)
        return elapsed

    with tempfile.TemporaryDirectory() as tmp:
        koaml = koaml_workdir(Path(tmp) / "koaml")
        bare = Path(tmp) / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE_SNAKEFILE)
        plan(koaml), plan(bare)  # warm caches (lm-eval task index, Python bytecode)
        times = alternate(
            {"koaml": lambda: timed_plan("koaml", koaml), "bare": lambda: timed_plan("bare", bare)}, rounds
        )
    result = {
        "runs": RUNS,
        "benchmarks": BENCHMARKS,
        "jobs": jobs,
        **timings(times, rounds),
    }
    result["ratio"] = result["koaml_s"] / result["bare_s"]
    write_result(
        "plan_dag_sweep" if SWEEP else "plan_dag",
        result,
        f"{jobs['koaml']} jobs: koa-ml {result['koaml_s']:.2f} s, bare {result['bare_s']:.2f} s ({jobs['bare']} jobs): "
        f"ratio {result['ratio']:.2f} (target <= 1.5, < 5 s; median of {rounds}, alternating)",
    )


if __name__ == "__main__":
    main()
