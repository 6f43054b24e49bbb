"""One model load for many benchmarks: SmolLM2 on four small benchmarks, as four `koaml evaluate` jobs (one per
benchmark, what the evaluate rule runs) and as one `koaml evaluate-model` job (evaluation.group_by_model), timed
alternately, whole processes from start to results on disk. Also checks that both give the same scores.

    .venv/bin/python bench/eval_grouping.py [--smoke]    # writes bench/results/eval_grouping.json
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, REPO, alternate, median, repeats, smoke, smollm2, timed, timings, tiny_model, write_result

# Four small benchmarks: the demo's two tasks, each at two sizes (distinct suites, distinct result folders).
SUITES = {
    "mc_a": ("config/benchmarks/demo_arith_mc.yaml", 40),
    "mc_b": ("config/benchmarks/demo_arith_mc.yaml", 20),
    "gen_a": ("config/benchmarks/demo_arith_gen.yaml", 40),
    "gen_b": ("config/benchmarks/demo_arith_gen.yaml", 20),
}
THREADS = 2
SMOKE_SUITES = ("mc_b", "gen_b")  # --smoke: two suites on the tiny model (the shape of the JSON, in seconds)


def resolved_configs(tmp: Path, names: list[str], limit_scale: float) -> dict[str, Path]:
    """Each suite's resolved config, as the benchmark_config rule writes it."""
    from koaml.io import write_yaml
    from koaml.recipe import load_benchmark

    configs = {}
    for name in names:
        path, limit = SUITES[name]
        configs[name] = tmp / f"{name}.yaml"
        write_yaml(configs[name], load_benchmark(REPO / path, {"limit": max(2, int(limit * limit_scale))}))
    return configs


def scores(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["results"]


def main() -> None:
    rounds = repeats(3)
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp) if smoke() else smollm2(tmp)
        names = list(SMOKE_SUITES) if smoke() else list(SUITES)
        configs = resolved_configs(tmp, names, 0.25 if smoke() else 1.0)
        outs = {variant: {name: tmp / variant / name for name in names} for variant in ("separate", "grouped")}
        threads = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}

        def separate() -> float:
            shutil.rmtree(tmp / "separate", ignore_errors=True)
            total = 0.0
            for name, config in configs.items():
                cmd = [BIN / "koaml", "evaluate", "--config", config, "--model", model]
                elapsed, _ = timed([*cmd, "--out", outs["separate"][name], "--threads", str(THREADS)], REPO, **threads)
                total += elapsed
            return total

        def grouped() -> float:
            shutil.rmtree(tmp / "grouped", ignore_errors=True)
            suites = [arg for name, config in configs.items() for arg in ("--suite", config, outs["grouped"][name])]
            cmd = [BIN / "koaml", "evaluate-model", "--model", model, *suites, "--threads", str(THREADS)]
            elapsed, _ = timed(cmd, REPO, **threads)
            return elapsed

        times = alternate({"separate": separate, "grouped": grouped}, rounds)
        same = all(scores(outs["separate"][n]) == scores(outs["grouped"][n]) for n in names)
    saved_per_suite = (median(times["separate"]) - median(times["grouped"])) / (len(names) - 1)
    result = {
        "model": "tiny" if smoke() else "SmolLM2-135M-Instruct",
        "suites": {name: {"file": SUITES[name][0], "limit": SUITES[name][1]} for name in names},
        **timings(times, rounds),
        "grouped_over_separate": round(median(times["grouped"]) / median(times["separate"]), 3),
        "saved_per_extra_suite_s": round(saved_per_suite, 2),
        "same_scores": same,
    }
    write_result(
        "eval_grouping",
        result,
        f"{len(names)} suites, {result['model']}: grouped {result['grouped_s']:.1f} s vs separate "
        f"{result['separate_s']:.1f} s, ratio {result['grouped_over_separate']:.2f} ({saved_per_suite:.1f} s saved "
        f"per suite after the first); same scores: {'yes' if same else 'no'}",
    )
    if not same:
        raise SystemExit("grouped and separate evaluations gave different scores")


if __name__ == "__main__":
    main()
