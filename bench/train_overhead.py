"""Training-loop overhead: koa-ml's train job (`koaml train`, as the workflow's train rule runs it) against a bare
TRL script a user would write (bench/bare_trl.py) at the same settings, timed alternately, medians.

Both train the same prepared rows (`koaml prepare-data` once) with the same TRL config (koaml.trl_args' keyword
arguments, handed to the bare script as JSON) and the same threads, so the same losses come out; what differs is
everything koa-ml adds around TRL: its guards (SIGTERM, watchdog, non-finite stop, progress.json, kept steps), the
packed-rows trainer class, the resource and summary records, the model card. The figure is the ratio of TRL's own
``train_runtime`` (koa-ml over bare; the target is at most 1.05) and of the whole processes' wall times.

Cases: SFT with LoRA and full fine-tuning on the demo's tiny model and on SmolLM2-135M-Instruct (LoRA r16 on all
linear layers, 60 steps; full: 40 steps; batch 8, max length 64, eval and checkpoints every 20 steps, packing
off, float32), DPO with LoRA on the tiny model. ``--smoke`` runs the tiny model's SFT LoRA for a few steps once.

    .venv/bin/python bench/train_overhead.py [--smoke]    # writes bench/results/train_overhead.json
    .venv/bin/python bench/train_overhead.py --cases tiny_sft_full,tiny_dpo_lora   # remeasures these, keeps the rest
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    KOAML,
    REPO,
    alternate,
    median,
    prepare_once,
    repeats,
    result_path,
    smoke,
    smollm2,
    timed,
    tiny_model,
    train_args,
    write_result,
)

THREADS = 2  # the train rule asks for 4; `snakemake --cores 2` gives it 2
BARE = REPO / "bench/bare_trl.py"
# Settings both sides train with: the measured setting (packing off: TRL's padding-free packing and
# koa-ml's packed rows are different computations).
SETTINGS = {"training": {"packing": False, "save_steps": 20, "eval_steps": 20, "logging_steps": 5}}


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "tiny" or "smollm2"
    recipe: str
    overrides: dict


CASES = (
    Case("tiny_sft_lora", "tiny", "config/recipes/demo_lora.yaml", {"training": {"max_steps": 60}}),
    Case("tiny_sft_full", "tiny", "config/recipes/demo_full.yaml", {"training": {"max_steps": 60}}),
    Case("tiny_dpo_lora", "tiny", "config/recipes/demo_dpo_lora.yaml", {"training": {"max_steps": 60}}),
    Case(
        "smollm2_sft_lora",
        "smollm2",
        "config/recipes/smollm2_arith_lora.yaml",
        {"peft": {"lora_target_modules": "all-linear"}, "training": {"max_steps": 60}},
    ),
    Case("smollm2_sft_full", "smollm2", "config/recipes/smollm2_arith_full.yaml", {"training": {"max_steps": 40}}),
)
SMOKE_CASE = Case("tiny_sft_lora", "tiny", "config/recipes/demo_lora.yaml", {"training": {"max_steps": 4}})


def merged(*dicts: dict) -> dict:
    from koaml.configfiles import deep_merge

    out: dict = {}
    for d in dicts:
        out = deep_merge(out, d)
    return out


def bare_settings(recipe, model: Path, data: Path, out: Path) -> dict:
    """The bare script's settings: the TRL config koa-ml's job builds for ``recipe`` (koaml.trl_args)."""
    from koaml.modeling import device
    from koaml.trl_args import trl_config_kwargs

    has_eval = (data / "eval.jsonl").stat().st_size > 0
    config = trl_config_kwargs(recipe, str(out.with_name(out.name + "_checkpoints")), has_eval, device() == "cuda")
    peft = recipe.peft
    lora = None
    if recipe.method != "full":
        lora = {
            "r": peft.lora_r,
            "lora_alpha": peft.lora_alpha,
            "lora_dropout": peft.lora_dropout,
            "target_modules": peft.lora_target_modules,
        }
    return {
        "trainer": recipe.trainer.trl_name,
        "model": str(model),
        "data": str(data),
        "eval": has_eval,
        "out": str(out),
        "dtype": recipe.model.dtype,
        "attn_implementation": recipe.model.attn_implementation,
        "lora": lora,
        "threads": THREADS,
        "config": config,
    }


def final_loss(history: list[dict]) -> float | None:
    return next((e["loss"] for e in reversed(history) if "loss" in e), None)


def runtime(history: list[dict]) -> float:
    return next(e["train_runtime"] for e in reversed(history) if "train_runtime" in e)


def measure(case: Case, tmp: Path, models: dict[str, Path], prepared: dict, rounds: int) -> dict:
    """Time one case: koa-ml's job and the bare script, alternating."""
    from koaml.io import write_yaml
    from koaml.recipe import load_recipe

    root = tmp / case.name
    root.mkdir(parents=True)
    model = models[case.model]
    recipe = load_recipe(REPO / case.recipe, merged(SETTINGS, case.overrides))
    write_yaml(root / "config.yaml", recipe)
    data = prepare_once(recipe, root / "config.yaml", model, root / "data", prepared)
    settings = root / "bare.json"
    settings.write_text(json.dumps(bare_settings(recipe, model, data, root / "bare_out")))
    ours = [*KOAML, *train_args(root / "config.yaml", model, data, root / "koaml_out", root / "ckpt", THREADS)]
    commands = {"koaml": (ours, root / "koaml_out"), "bare": ([sys.executable, BARE, settings], root / "bare_out")}
    runs: dict[str, list[dict]] = {name: [] for name in commands}

    def once(name: str) -> float:
        cmd, out = commands[name]
        for leftover in (out, root / "ckpt", out.with_name(out.name + "_checkpoints")):
            shutil.rmtree(leftover, ignore_errors=True)
        wall, _ = timed(cmd, cwd=REPO)
        history = json.loads((out / "log_history.json").read_text())
        runs[name].append({"wall_s": wall, "train_runtime_s": runtime(history), "final_loss": final_loss(history)})
        return wall

    alternate({name: (lambda name=name: once(name)) for name in commands}, rounds)
    med = {name: {k: median([r[k] for r in rs]) for k in ("wall_s", "train_runtime_s")} for name, rs in runs.items()}
    losses = {name: rs[-1]["final_loss"] for name, rs in runs.items()}
    return {
        "recipe": case.recipe,
        "steps": recipe.training.max_steps,
        "koaml": med["koaml"],
        "bare": med["bare"],
        "runs": runs,
        "final_loss": losses,
        "same_loss": round(losses["koaml"], 4) == round(losses["bare"], 4),
        "train_runtime_ratio": med["koaml"]["train_runtime_s"] / med["bare"]["train_runtime_s"],
        "wall_ratio": med["koaml"]["wall_s"] / med["bare"]["wall_s"],
    }


def chosen_cases() -> tuple[Case, ...]:
    if smoke():
        return (SMOKE_CASE,)
    if "--cases" in sys.argv:
        names = sys.argv[sys.argv.index("--cases") + 1].split(",")
        return tuple(c for c in CASES if c.name in names)
    return CASES


def main() -> None:
    cases = chosen_cases()
    rounds = repeats(3)
    results = {}
    earlier = result_path("train_overhead")
    if "--cases" in sys.argv and earlier.is_file():  # remeasure the cases named, keep the others' figures
        results = {k: v for k, v in json.loads(earlier.read_text())["cases"].items() if k in {c.name for c in CASES}}
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"tiny": tiny_model(tmp)}
        if any(c.model == "smollm2" for c in cases):
            models["smollm2"] = smollm2(tmp)
        prepared: dict = {}
        for case in cases:
            results[case.name] = measure(case, tmp, models, prepared, rounds)
            r = results[case.name]
            print(
                f"{case.name:18} train_runtime {r['koaml']['train_runtime_s']:7.1f} s vs bare "
                f"{r['bare']['train_runtime_s']:7.1f} s: {r['train_runtime_ratio']:.3f}; whole process "
                f"{r['wall_ratio']:.3f}; final loss {r['final_loss']['koaml']:.5f} vs {r['final_loss']['bare']:.5f}",
                flush=True,
            )
    worst = max(r["train_runtime_ratio"] for r in results.values())
    result = {"threads": THREADS, "repeats": rounds, "target_ratio": 1.05, "cases": results, "worst_ratio": worst}
    result["target_met"] = worst <= 1.05 and all(r["same_loss"] for r in results.values())
    write_result(
        "train_overhead",
        result,
        "koaml train / bare TRL (train_runtime, medians of "
        f"{rounds}, alternating): "
        + ", ".join(f"{name} {r['train_runtime_ratio']:.2f}" for name, r in results.items())
        + f"; same final loss: {'yes' if all(r['same_loss'] for r in results.values()) else 'NO'} (target <= 1.05)",
    )


if __name__ == "__main__":
    main()
