"""Adaptive search against a grid of the same budget: the demo's tiny model fine-tuned with LoRA, the objective
its final eval loss, over learning rate (log-uniform) x LoRA rank (4 or 16). The grid is 4 learning rates
(log-spaced over the same range) x 2 ranks = 8 trials; TPE gets the same 8 trials, asked 2 at a time through the
workflow's own code (koaml.search: the journal study, constant liar, per-round seeds), for several seeds. Every
trial is a real `koaml prepare-data` / `koaml train` of the workflow's recipe. Reports the best objective each
method reaches after each trial, and how many trials TPE needs to reach the grid's best.

    .venv/bin/python bench/search_vs_grid.py [--smoke]    # writes bench/results/search_vs_grid.{json,png}
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BIN, REPO, median, run, smoke, tiny_model, train_args, write_result

LOW, HIGH = 1.0e-4, 3.0e-2
RANKS = [4, 16]
BUDGET = 8
SEEDS = [0, 1, 2]
STEPS = 40
PARALLEL = 2  # trials asked at once, as a search on a cluster runs them


def experiment(seed: int, n_trials: int, parallel: int) -> dict:
    return {
        "experiment": "search-vs-grid",
        "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
        "runs": {
            "s": {
                "base": "tiny",
                "recipe": "config/recipes/demo_lora.yaml",
                "overrides": {"training": {"max_steps": STEPS, "save_steps": STEPS, "eval_steps": STEPS}},
                "search": {
                    "space": {
                        "training.learning_rate": {"type": "loguniform", "low": LOW, "high": HIGH},
                        "peft.lora_r": {"type": "categorical", "choices": RANKS},
                    },
                    "objective": "eval_loss",
                    "n_trials": n_trials,
                    "parallel": parallel,
                    "seed": seed,
                },
            }
        },
        "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    }


class Trainer:
    """Trains a point of the space once (the same point is not trained twice across methods) in ``folder``."""

    def __init__(self, folder: Path, model: Path):
        self.folder, self.model, self.losses = folder, model, {}

    def loss(self, search, point: dict, trial: str) -> float:
        from koaml.io import write_yaml
        from koaml.search import trial_recipe

        key = (round(point["training.learning_rate"], 12), point["peft.lora_r"])
        out = Path(f"results/runs/{trial}/trained")  # in the method's own folder (the working directory)
        if key not in self.losses:
            config = self.folder / f"points/{len(self.losses)}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            write_yaml(config, trial_recipe(search, {"trials": {trial: point}}, trial))
            data = self.folder / "data"
            if not data.exists():
                run([BIN / "koaml", "prepare-data", "--config", config, "--tokenizer", self.model, "--out", data])
            done = self.folder / f"points/{len(self.losses)}"
            run(
                [BIN / "koaml", *train_args(config, self.model, data, done, self.folder / "checkpoints" / done.name, 2)]
            )
            self.losses[key] = json.loads((done / "train_summary.json").read_text())["final_eval_loss"]
        out.mkdir(parents=True, exist_ok=True)  # what koaml.search reads: the trial's training summary
        (out / "train_summary.json").write_text(json.dumps({"final_eval_loss": self.losses[key]}))
        return self.losses[key]


def best_so_far(losses: list[float]) -> list[float]:
    return [min(losses[: i + 1]) for i in range(len(losses))]


def tpe(trainer: Trainer, seed: int, budget: int, folder: Path) -> list[float]:
    from koaml.config import load_experiment
    from koaml.search import ask_round, journal_file

    os.chdir(folder)
    search = load_experiment(experiment(seed, budget, PARALLEL)).searches["s"]
    losses = []
    for r in range(1, search.rounds + 1):
        earlier = [t for k in range(1, r) for t in search.round_trials(k)]
        asked = ask_round(search, r, search.round_trials(r), earlier, journal_file(search.name))
        losses += [trainer.loss(search, point, trial) for trial, point in asked["trials"].items()]
    return losses


def grid(trainer: Trainer, budget: int, folder: Path) -> tuple[list[float], list[dict]]:
    """The grid in a seeded random order (as Optuna's GridSampler runs one)."""
    import random

    from koaml.config import load_experiment

    os.chdir(folder)
    search = load_experiment(experiment(0, budget, PARALLEL)).searches["s"]
    per_rank = max(1, budget // len(RANKS))
    rates = [LOW * (HIGH / LOW) ** (i / max(1, per_rank - 1)) for i in range(per_rank)]
    points = [{"training.learning_rate": lr, "peft.lora_r": r} for lr in rates for r in RANKS][:budget]
    random.Random(0).shuffle(points)
    return [trainer.loss(search, p, f"s_t{k}") for k, p in enumerate(points, 1)], points


def plot(curves: dict[str, list[float]], out: Path) -> None:
    """The best eval loss reached after each trial: the grid (in its run order) and TPE for each seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (name, values) in enumerate(curves.items()):
        style = {"color": "black", "linewidth": 2} if name == "grid" else {"color": f"C{i}", "alpha": 0.8}
        ax.step(range(1, len(values) + 1), values, where="post", marker="o", markersize=3, label=name, **style)
    ax.set_xlabel("trial")
    ax.set_ylabel("best eval loss so far")
    ax.set_title("TPE vs a grid of the same budget (tiny model, LoRA)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    budget, seeds = (2, [0]) if smoke() else (BUDGET, SEEDS)
    global STEPS, PARALLEL
    if smoke():  # two rounds of one trial: asking, training and telling all run once
        STEPS, PARALLEL = 2, 1
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp)
        trainer = Trainer(tmp / "trained", model)
        folders = {}
        for name in ["grid", *(f"tpe_seed{s}" for s in seeds)]:
            folders[name] = tmp / name
            folders[name].mkdir()
            for link in ("config", "resources"):
                (folders[name] / link).symlink_to(REPO / link)
        trainer.folder.mkdir()
        grid_losses, grid_points = grid(trainer, budget, folders["grid"])
        tpe_losses = {s: tpe(trainer, s, budget, folders[f"tpe_seed{s}"]) for s in seeds}
        os.chdir(REPO)
    grid_best = min(grid_losses)
    curves = {"grid": best_so_far(grid_losses), **{f"tpe_seed{s}": best_so_far(v) for s, v in tpe_losses.items()}}
    reached = {
        s: next((i + 1 for i, v in enumerate(best_so_far(v)) if v <= grid_best), None) for s, v in tpe_losses.items()
    }
    tpe_final = [min(v) for v in tpe_losses.values()]
    result = {
        "model": "the demo's tiny model (LoRA, eval loss)",
        "budget": budget,
        "steps_per_trial": STEPS,
        "space": {"learning_rate": [LOW, HIGH], "lora_r": RANKS},
        "grid_points": grid_points,
        "best_so_far": curves,
        "grid_best": grid_best,
        "tpe_best_median": median(tpe_final),
        "tpe_best": tpe_final,
        "tpe_trials_to_reach_grid_best": reached,
        "distinct_trainings": len(trainer.losses),
    }
    ahead = sum(v < grid_best for v in tpe_final)
    path = write_result(
        "search_vs_grid",
        result,
        f"best eval loss after {budget} trials: grid {grid_best:.3f}; TPE median {median(tpe_final):.3f} "
        f"({', '.join(f'{v:.3f}' for v in tpe_final)}): TPE ahead with {ahead} seed{'s' * (ahead != 1)} of "
        f"{len(tpe_final)}",
    )
    plot(curves, path.with_suffix(".png"))
    print(f"TPE trials to reach the grid's best: {reached}")
    if not all(math.isfinite(v) for v in [*tpe_final, grid_best]):
        raise SystemExit("a trial's eval loss is not finite")


if __name__ == "__main__":
    main()
