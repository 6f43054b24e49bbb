"""Evaluate one model on one benchmark suite with the lm-evaluation-harness.

Writes lm-eval's results JSON (``results.json``) and its per-sample logs (``samples_<task>.jsonl``)
into the output folder atomically: a killed evaluation leaves no result behind.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from pathlib import Path

from koaml.configfiles import ConfigError
from koaml.experiment import MODEL_FOLDERS
from koaml.integrity import MARKER, damage, mark_complete
from koaml.io import atomic_dir, config_hash, write_json
from koaml.modeling import device
from koaml.recipe import BenchmarkSuite, load_benchmark
from koaml.tasks import effective_generation

log = logging.getLogger(__name__)

INPUTS = "inputs.json"  # an evaluation's inputs fingerprint (koaml.evaluate.inputs_fingerprint)

# Result sections that are per task and merged across the suite's lm-eval calls.
_PER_TASK_SECTIONS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
)


def gen_kwargs(generation: dict) -> dict:
    """lm-eval generation kwargs for the keys the benchmark file writes (temperature 0 = greedy); none when it
    writes none, so that each task runs with its own generation_kwargs."""
    return effective_generation({}, generation)


def task_manager(bench: dict):
    """lm-eval's task index for a benchmark.

    Indexing lm-eval's own task YAMLs (over 10,000 files) takes seconds per job; when every task of the suite
    is a task (not a group or tag) under the suite's ``include_path``, only that folder is indexed, which
    finds the same tasks: lm-eval lets ``include_path`` tasks override its own of the same name anyway.
    """
    from lm_eval.tasks import TaskManager

    include_path = bench.get("include_path")
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(task["task"] in local.all_subtasks for task in bench["tasks"]):
            return local
    return TaskManager(include_path=include_path)


def multi_gpu_kwargs(backend: str) -> dict:
    """How lm-eval spreads a model over the job's GPUs (several when one cannot hold it; koaml.resources
    sizes the request): vLLM's tensor parallelism, or HF's ``parallelize`` (layers over the GPUs)."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        return {"device": device()} if backend == "hf" else {}
    return {"tensor_parallel_size": gpus} if backend == "vllm" else {"parallelize": True}


def load_lm(bench: dict, model_path: str, adapter: str | None = None):
    """The lm-eval model for a benchmark's backend; ``adapter`` evaluates a LoRA adapter unmerged."""
    model, generation = bench["model"], bench["generation"]
    if model["backend"] == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        kwargs = {"lora_local_path": adapter} if adapter else {}
        return VLLM(
            pretrained=model_path,
            dtype=model["dtype"],
            max_model_len=model["model_max_length"],
            batch_size=generation["per_device_batch_size"],
            seed=generation["seed"],
            **kwargs,
            **thinking_kwargs(generation),
            **multi_gpu_kwargs("vllm"),
        )
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=model_path,
        peft=adapter,
        dtype=model["dtype"],
        max_length=model["model_max_length"],
        batch_size=generation["per_device_batch_size"],
        **thinking_kwargs(generation),
        **multi_gpu_kwargs("hf"),
    )


def thinking_kwargs(generation: dict) -> dict:
    """lm-eval's options for thinking models, only where the benchmark file sets them."""
    return {key: generation[key] for key in ("enable_thinking", "think_end_token") if key in generation}


BENCHMARK_DIR = Path("config/benchmarks")


def benchmark_file(name: str) -> str:
    """A benchmark file: ``name`` itself, or a shipped one named ``name`` (``mmlu`` -> config/benchmarks/mmlu.yaml);
    its task names checked against lm-eval's index."""
    from koaml.tasks import check_benchmark

    path = Path(name) if Path(name).is_file() else BENCHMARK_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))
        hint = difflib.get_close_matches(name, shipped, n=3)
        suggestion = (
            f"; did you mean {', '.join(hint)}?" if hint else f"; shipped: {', '.join(shipped)}" if shipped else ""
        )
        raise ConfigError(f"--config: {name}: no such benchmark file{suggestion}")
    check_benchmark(str(path), load_benchmark(path))
    return str(path)


def model_location(model: str) -> str:
    """``run:<name>`` as that run's model folder (the step select_checkpoint chose, else merged, or trained for full
    fine-tuning); else ``model``."""
    if not model.startswith("run:"):
        return model
    run = model[len("run:") :]
    for step in MODEL_FOLDERS:
        folder = Path("results/runs") / run / step
        if (folder / "config.json").is_file():
            return str(folder)
    raise ConfigError(
        f"--model: {model}: no finished model in results/runs/{run}/ ({', '.join(MODEL_FOLDERS)}); run the workflow "
        "first"
    )


def evaluate(
    bench_config_path: str,
    model_path: str,
    out_dir: str,
    threads: int,
    adapter: str | None = None,
    limit: int | None = None,
) -> dict:
    """Run every task of a benchmark suite on a model; return the merged results (without samples).
    ``limit`` overrides the benchmark's. A kept step that training ended before is passed on as such, not
    evaluated (koaml.snapshots)."""
    import torch

    from koaml.selection import chosen_adapter
    from koaml.snapshots import pass_on_not_reached

    if pass_on_not_reached(model_path, out_dir):
        return {}
    adapter = chosen_adapter(adapter)
    torch.set_num_threads(threads)
    # a resolved config, or a benchmark file as written (defaults filled in)
    bench = load_benchmark(bench_config_path, {"limit": limit} if limit else None)
    log.info("evaluating %s%s on %s", model_path, f" with adapter {adapter}" if adapter else "", bench_config_path)
    fingerprint = inputs_fingerprint(bench, model_path, adapter)
    return run_suite(bench, load_lm(bench, model_path, adapter), model_path, adapter, out_dir, fingerprint)


def evaluate_model(model_path: str, adapter: str | None, suites: list[tuple[str, str]], threads: int) -> dict[str, str]:
    """Evaluate one model on several benchmark suites, ``(resolved config, output folder)`` each, loading it once
    (once per distinct way the suites load it: dtype, backend, length and batch size). A suite whose folder
    holds a finished evaluation of the same inputs (``inputs.json``: the config, its task files and the model)
    is kept as it is: Snakemake reruns the whole job when one suite changed. Returns what was done per folder."""
    import torch

    from koaml.selection import chosen_adapter

    adapter = chosen_adapter(adapter)
    torch.set_num_threads(threads)
    loaded: dict[str, object] = {}
    done = {}
    for config_path, out_dir in suites:
        bench = load_benchmark(config_path)
        fingerprint = inputs_fingerprint(bench, model_path, adapter)
        if _current(out_dir, fingerprint):
            log.info("%s: up to date (same benchmark, task files and model); kept", out_dir)
            done[out_dir] = "kept"
            continue
        key = json.dumps([bench["model"], bench["generation"]["per_device_batch_size"]], sort_keys=True)
        if key not in loaded:
            log.info("loading %s for %s", model_path, config_path)
            loaded[key] = load_lm(bench, model_path, adapter)
        run_suite(bench, loaded[key], model_path, adapter, out_dir, fingerprint)
        done[out_dir] = "evaluated"
    log.info(
        "model loads: %d for %d suites (%d evaluated)", len(loaded), len(suites), list(done.values()).count("evaluated")
    )
    return done


def inputs_fingerprint(bench: BenchmarkSuite, model_path: str, adapter: str | None) -> str:
    """What an evaluation's numbers depend on: the resolved benchmark, its local task files, and the model (and
    adapter) folder's files by name, size and modification time (a hub ID by its name)."""
    parts = [bench.config_hash]
    parts += [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in bench.local_task_files]
    for folder in (model_path, adapter):
        path = Path(folder) if folder else None
        if path is not None and path.is_dir():
            parts += [
                f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir()) if p.is_file()
            ]
        else:
            parts.append(str(folder))
    return config_hash(parts)


def _current(out_dir: str, fingerprint: str) -> bool:
    """A finished, intact evaluation of the same inputs is in ``out_dir``."""
    path = Path(out_dir) / INPUTS
    if not path.is_file() or damage(out_dir) or not (Path(out_dir) / MARKER).is_file():
        return False
    return json.loads(path.read_text()).get("fingerprint") == fingerprint


def run_suite(bench: BenchmarkSuite, lm, model_path: str, adapter: str | None, out_dir: str, fingerprint: str) -> dict:
    """Every task of ``bench`` on the loaded lm-eval model ``lm``; results, per-sample logs, the protocol and the
    inputs' fingerprint written to ``out_dir`` atomically."""
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    generation = bench["generation"]
    if bench["allow_code_execution"]:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # read by the code-execution metrics
    tasks = task_manager(bench)
    merged: dict = {section: {} for section in _PER_TASK_SECTIONS}
    samples: dict[str, list] = {}
    for task in bench["tasks"]:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task["task"]],
            num_fewshot=task["num_fewshot"],
            limit=bench["limit"],
            log_samples=True,
            gen_kwargs=gen_kwargs(generation) or None,
            apply_chat_template=generation["apply_chat_template"],
            fewshot_as_multiturn=generation["fewshot_as_multiturn"],
            task_manager=tasks,
            random_seed=generation["seed"],
            numpy_random_seed=generation["seed"],
            torch_random_seed=generation["seed"],
            fewshot_random_seed=generation["seed"],
            confirm_run_unsafe_code=bench["allow_code_execution"],
        )
        for section in _PER_TASK_SECTIONS:
            merged[section].update(out.get(section) or {})
        samples.update(out.get("samples") or {})
        merged["config"] = out.get("config", {})

    merged["model_path"] = str(model_path)
    merged["adapter_path"] = adapter
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "results.json", json.loads(json.dumps(merged, default=handle_non_serializable)))
        write_json(tmp / "protocol.json", protocol(merged["configs"], generation))
        write_json(tmp / INPUTS, {"fingerprint": fingerprint})
        for task_name, rows in samples.items():
            with open(tmp / f"samples_{task_name}.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, default=handle_non_serializable) + "\n")
        mark_complete(tmp)
    return merged


def protocol(configs: dict, generation: dict) -> dict:
    """The settings each task ran with (lm-eval's effective task configs): few-shot count, generation kwargs,
    repeats, metrics and filters, the chat template, and which generation keys the benchmark file set."""
    written = [
        key for key in ("max_new_tokens", "temperature", "enable_thinking", "think_end_token") if key in generation
    ]
    return {
        task: {
            "output_type": config.get("output_type"),
            "num_fewshot": config.get("num_fewshot"),
            "generation_kwargs": config.get("generation_kwargs")
            if config.get("output_type") == "generate_until"
            else None,
            "repeats": config.get("repeats"),
            "metrics": [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)],
            "filters": [f.get("name") for f in config.get("filter_list") or [] if isinstance(f, dict)] or ["none"],
            "apply_chat_template": generation["apply_chat_template"],
            "fewshot_as_multiturn": generation["fewshot_as_multiturn"],
            "enable_thinking": generation.get("enable_thinking"),
            "set_by_benchmark": written,
        }
        for task, config in configs.items()
    }
