"""``koaml``: the command-line steps the workflow's rules call (usable by hand too)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from koaml.configfiles import ConfigError, slug
from koaml.io import DiskSpaceError


def _build_model(a):
    from koaml.tinymodel import build_tiny_model, load_spec

    build_tiny_model(load_spec(a.spec), a.out)


def _convert_gguf(a):
    from koaml.gguf import check, convert

    convert(check(a.gguf, "--gguf"), a.out, a.dtype)


def _prepare_data(a):
    from koaml.data import prepare
    from koaml.recipe import read_recipe
    from koaml.shapes import check_recipe_fits_model, folder_facts, readable_model_folder

    recipe = read_recipe(a.config)
    if folder := readable_model_folder(a.tokenizer):  # the model, here now however it came
        check_recipe_fits_model(recipe, folder_facts(folder), a.tokenizer, a.config)
    stats = prepare(recipe, a.tokenizer, a.out)
    logging.info("prepared %s", stats)


def _check_training_disk(recipe, model: str, checkpoints: str) -> None:
    """Refuse to start training without disk for its checkpoints and final model (estimated from the model)."""
    from koaml.io import ensure_free_disk
    from koaml.memory import estimate_training_disk_gb
    from koaml.shapes import SizingError, model_shape

    try:
        need_gb = estimate_training_disk_gb(recipe, model_shape(model))
    except SizingError as exc:
        logging.warning("free disk not checked: %s", exc)
        return
    what = f"training ({recipe.training.save_total_limit} checkpoints + 1 being written, and the final model)"
    ensure_free_disk(checkpoints, need_gb, what)
    logging.info("disk: about %.1f GB needed for %s", need_gb, what)


def _train(a):
    from koaml.lifecycle import is_distributed_worker, launch
    from koaml.recipe import read_recipe
    from koaml.search import TRIAL_FILE
    from koaml.train import train

    recipe = read_recipe(a.config)
    if not is_distributed_worker():
        _check_training_disk(recipe, a.model, a.checkpoints)
    num_processes = recipe.training.num_processes
    if num_processes > 1 and not is_distributed_worker():
        launch(a.argv, num_processes)
    else:
        trial = Path(a.config).with_name(TRIAL_FILE).is_file()  # written next to a search trial's config
        train(recipe, a.model, a.data, a.out, a.checkpoints, a.threads, search_trial=trial)


def _merge(a):
    from koaml.merge import merge

    merge(a.config, a.base, a.adapter, a.out)


def _evaluate(a):
    from koaml.evaluate import benchmark_file, evaluate, model_location
    from koaml.leaderboard import scores_text

    config = benchmark_file(a.config)
    model = model_location(a.model)
    out = a.out or f"results/eval/{slug(a.model)}/{Path(config).stem}"
    evaluate(config, model, out, a.threads, a.adapter, limit=a.limit)
    print(scores_text(a.model, Path(config).stem, out), end="")
    logging.info("results in %s", out)


def _evaluate_model(a):
    from koaml.evaluate import evaluate_model
    from koaml.leaderboard import scores_text

    done = evaluate_model(a.model, a.adapter, [tuple(suite) for suite in a.suite], a.threads)
    for config, out in a.suite:
        print(scores_text(a.model, Path(config).stem, out) + ("(kept: up to date)\n" if done[out] == "kept" else ""))


def _compare(a):
    from koaml.compare import DEFAULT_STATISTICS, compare, decide, note, to_markdown

    table = decide(compare(a.finetuned, a.base, run=a.finetuned, base_model=a.base), DEFAULT_STATISTICS)
    if a.csv:
        table.to_csv(a.csv, index=False)
    print(note(table) + to_markdown(table), end="")


def _search_ask(a):
    from koaml.configfiles import load_yaml
    from koaml.io import write_yaml
    from koaml.search import Search, ask_round, journal_file

    search = Search.from_dict(load_yaml(a.search))
    asked = ask_round(search, a.round, a.trials, a.earlier, journal_file(search.name))
    write_yaml(a.out, asked)
    logging.info("round %d of %s: %s", a.round, search.name, asked["trials"])


def _search_summary(a):
    from koaml.configfiles import load_yaml
    from koaml.search import Search, journal_file, summarize

    search = Search.from_dict(load_yaml(a.search))
    best = summarize(search, a.trials, journal_file(search.name), a.out)
    logging.info("best trial of %s: %s", search.name, best)


def _experiment(configfiles: list[str] | None):
    """The experiment of these files, merged as Snakemake does (the demo's config/config.yaml when none)."""
    from koaml.config import load_experiment
    from koaml.configfiles import ConfigError, deep_merge, load_yaml

    files = configfiles or ["config/config.yaml"]
    config: dict = {}
    for path in files:
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            found = "nothing (an empty file)" if loaded is None else f"a {type(loaded).__name__}"
            raise ConfigError(
                f"{path}: the top level must be a mapping of keys (experiment:, runs:, benchmarks:, ...); found {found}"
            )
        config = deep_merge(config, loaded)
    return load_experiment(config, source=", ".join(files))


def _chat(a):
    from koaml.chat import serve

    serve(_experiment(a.configfile), a.host, a.port, a.run)


def _status(a):
    from koaml.status import status, table, watch

    exp = _experiment(a.configfile)
    if a.watch:
        watch(exp, ".", a.watch)
    else:
        print(table(status(exp, ".")), end="")


def _doctor(a):
    from koaml.doctor import doctor

    checks = doctor(a.profile)
    print("\n".join(map(str, checks)))
    failed = sum(c.status == "FAIL" for c in checks)
    if failed:
        raise ConfigError(f"{failed} check(s) failed for profile {a.profile}; fix them before submitting jobs")


def _threads_option(s) -> None:
    """``--threads``: torch's CPU threads, by default every CPU this process may use (what a bare script gets)."""
    from koaml.lifecycle import available_cpus

    s.add_argument(
        "--threads",
        type=int,
        default=available_cpus(),
        help="CPU threads for torch (default: the CPUs this job may use, here %(default)s)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="koaml", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("build-model", help="build the demo's tiny model from a spec")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_build_model)

    s = sub.add_parser("convert-gguf", help="dequantize a GGUF model into a Hugging Face folder")
    s.add_argument("--gguf", required=True, help="a .gguf file, or package:<python package>/<file>")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--out", required=True)
    s.set_defaults(func=_convert_gguf)

    s = sub.add_parser("prepare-data", help="load, template, split and check a run's training data")
    s.add_argument("--config", required=True, help="resolved run config (YAML)")
    s.add_argument("--tokenizer", required=True, help="model folder or hub ID whose tokenizer counts tokens")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_prepare_data)

    s = sub.add_parser("train", help="fine-tune one run (full, LoRA or QLoRA)")
    s.add_argument("--config", required=True)
    s.add_argument("--model", required=True, help="base model folder or hub ID")
    s.add_argument("--data", required=True, help="folder written by prepare-data")
    s.add_argument("--out", required=True)
    s.add_argument("--checkpoints", required=True, help="checkpoint folder (kept across failures)")
    _threads_option(s)
    s.set_defaults(func=_train)

    s = sub.add_parser("merge", help="merge a LoRA/QLoRA adapter into its base")
    s.add_argument("--config", required=True)
    s.add_argument("--base", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_merge)

    s = sub.add_parser(
        "evaluate",
        help="run one benchmark suite on one model with lm-eval",
        description="Evaluate one model on one benchmark suite, as the workflow's evaluate jobs do, or by hand: "
        "koaml evaluate --model Qwen/Qwen3-8B --config mmlu --limit 10",
    )
    s.add_argument(
        "--config",
        required=True,
        help="benchmark file (as written or resolved), or the name of one in config/benchmarks/",
    )
    s.add_argument(
        "--model",
        required=True,
        help="hub ID, model folder, or run:<name> (that run's final model under results/runs/)",
    )
    s.add_argument("--adapter", help="LoRA adapter folder: evaluate it on --model without merging")
    s.add_argument("--out", help="output folder (default: results/eval/<model>/<benchmark>)")
    s.add_argument("--limit", type=int, help="only the first N documents of each task (a quick check)")
    _threads_option(s)
    s.set_defaults(func=_evaluate)

    s = sub.add_parser(
        "evaluate-model",
        help="run several benchmark suites on one model, loading it once (evaluation.group_by_model)",
        description="Evaluate one model on several resolved benchmark suites in one process, as the workflow's "
        "evaluate_model jobs do: a suite whose folder holds a finished evaluation of the same inputs is kept.",
    )
    s.add_argument("--model", required=True, help="hub ID or model folder")
    s.add_argument("--adapter", help="LoRA adapter folder: evaluate it on --model without merging")
    s.add_argument(
        "--suite", nargs=2, action="append", required=True, metavar=("CONFIG", "OUT"), help="a resolved benchmark "
        "config and its output folder (repeat for each suite)",
    )  # fmt: skip
    _threads_option(s)
    s.set_defaults(func=_evaluate_model)

    s = sub.add_parser(
        "search-ask",
        help="tell a search's study the earlier trials' objectives, then ask it for a round of trials",
        description="One round of an adaptive search (runs.<name>.search), as the workflow's search_ask jobs run "
        "it: the earlier trials' objectives (from results/) are told to the study in results/search/<name>/"
        "journal.log, then the round's trials are asked; a trial asked before keeps its parameters.",
    )
    s.add_argument("--search", required=True, help="the search's settings (results/search/<name>/search.yaml)")
    s.add_argument("--round", type=int, required=True, help="the round (from 1)")
    s.add_argument("--trials", nargs="+", required=True, help="the names of the round's trials")
    s.add_argument("--earlier", nargs="*", default=[], help="the trials of the earlier rounds")
    s.add_argument("--out", required=True, help="the round's file: each trial's parameters")
    s.set_defaults(func=_search_ask)

    s = sub.add_parser(
        "search-summary",
        help="tell a search's last trials, then write trials.csv, best.yaml and importances.json",
    )
    s.add_argument("--search", required=True, help="the search's settings (results/search/<name>/search.yaml)")
    s.add_argument("--trials", nargs="+", required=True, help="every trial of the search")
    s.add_argument("--out", required=True, help="the search's folder")
    s.set_defaults(func=_search_summary)

    s = sub.add_parser(
        "compare",
        help="compare two lm-eval results (files or folders) with paired statistics",
        description="Compare a fine-tuned model's lm-eval results with its base's. Each argument is a "
        "results JSON or a folder holding one (koaml's results.json or lm-eval's results_*.json); the "
        "per-sample logs next to it (samples_<task>*.jsonl, from --log_samples) enable the paired CI and test.",
    )
    s.add_argument("base")
    s.add_argument("finetuned")
    s.add_argument("--csv", help="also write the table as CSV")
    s.set_defaults(func=_compare)

    s = sub.add_parser("status", help="where each model of the experiment stands: stage, state, SLURM job, progress")
    s.add_argument(
        "--configfile", nargs="+", help="experiment file(s), as given to snakemake (default: config/config.yaml)"
    )
    s.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    s.set_defaults(func=_status)

    s = sub.add_parser("chat", help="talk to a run's base and fine-tuned models side by side in the browser")
    s.add_argument(
        "--configfile", nargs="+", help="experiment file(s), as given to snakemake (default: config/config.yaml)"
    )
    s.add_argument("--run", help="the run shown first (default: the first finished one)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    s.set_defaults(func=_chat)

    s = sub.add_parser("doctor", help="check a SLURM profile against the live cluster before submitting")
    s.add_argument("--profile", default="profiles/koa", help="profile folder (default: profiles/koa)")
    s.set_defaults(func=_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except (ConfigError, DiskSpaceError) as exc:
        print(f"koaml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
