"""The KOA profile on a real SLURM cluster (tests/slurm/local-slurm.sh, KOA's partitions and GPU types):
`koaml doctor`, the controller job script, and the demo's LoRA run end to end with preemption of its training job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CANARIES, REPO, copy_workflow, secret_leaks

VENV_BIN = Path(sys.executable).parent
# What differs on a 2-core laptop from KOA: no accounting database (squeue for status), quick status
# checks, fewer jobs at once and one thread per job. Partitions, GPUs, time and memory are the profile's.
LAPTOP = [
    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "5", "--jobs", "4",
    "--set-threads", "train=1", "evaluate=1", "evaluate_model=1", "prepare_data=1",
]  # fmt: skip
CPU_RULES = {"build_base_model", "prepare_data", "merge"}
GPU_RULES = {"train", "evaluate_model", "evaluate_trial"}  # the SLURM demo groups its evaluations by model
LOGIN_NODE_RULES = {"run_config", "benchmark_config", "compare", "leaderboard", "report"}


def koa_env(local_slurm: dict, **extra: str) -> dict:
    return {**local_slurm, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "SLURM_ACCOUNT": "koa-test", **extra}


def doctor(cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "koaml"), "doctor", "--profile", "profiles/koa"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def with_squeue_status(workdir: Path) -> Path:
    """The workflow copy's KOA profile with job status from squeue, as a cluster without accounting needs."""
    profile_file = workdir / "profiles/koa/config.v8+.yaml"
    profile_file.write_text(profile_file.read_text() + "slurm-status-command: squeue\n")
    return workdir


def slurm_jobs(env: dict) -> list[dict[str, str]]:
    """Every job the cluster remembers (MinJobAge keeps finished ones), as scontrol's key=value fields."""
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [
        dict(f.split("=", 1) for f in line.split() if "=" in f)
        for line in out.splitlines()
        if line.startswith("JobId=")
    ]


def rule_of(job: dict[str, str]) -> str:
    """The rule name from the comment the SLURM executor sets: rule_<rule>_wildcards_<values>."""
    return job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]


# ---------------------------------------------------------------------------------------------- doctor


def test_partition_file_and_gpu_table_agree():
    """profiles/koa/partitions.yaml (the plugin's) and koa_gpus.yaml (the sizing's) name the same GPUs."""
    from koaml.gpus import KOA_GPUS

    partitions = yaml.safe_load((REPO / "profiles/koa/partitions.yaml").read_text())["partitions"]
    for gpu in KOA_GPUS:
        for name in set(gpu.partitions) & set(partitions):
            assert gpu.type in partitions[name]["available_gpu_models"], (gpu.type, name)
    for name, limits in partitions.items():
        for model in limits.get("available_gpu_models", []):
            assert any(g.type == model and name in g.partitions for g in KOA_GPUS), (model, name)


def test_doctor_accepts_the_koa_profile(local_slurm, tmp_path):
    """With job status from squeue, as on any cluster without an accounting database (this one)."""
    workdir = with_squeue_status(copy_workflow(tmp_path))
    proc = doctor(workdir, koa_env(local_slurm, HF_HOME=str(tmp_path / "hf")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok    partition 'gpu' exists with GPU types" in proc.stdout
    assert "ok    job status from squeue (slurm-status-command: squeue)" in proc.stdout
    assert f"ok    Hugging Face cache {tmp_path / 'hf'} is writable" in proc.stdout


def test_doctor_rejects_what_the_cluster_cannot_run(local_slurm, tmp_path):
    workdir = copy_workflow(tmp_path)
    partitions_file = workdir / "profiles/koa/partitions.yaml"
    partitions = yaml.safe_load(partitions_file.read_text())
    partitions["partitions"]["gpu-h200"] = {"max_runtime": "1-00:00:00", "max_gpu": 1}
    partitions["partitions"]["gpu"]["available_gpu_models"].append("NV-B200")
    partitions_file.write_text(yaml.safe_dump(partitions))
    profile_file = workdir / "profiles/koa/config.v8+.yaml"
    profile = yaml.safe_load(profile_file.read_text())
    profile["set-resources"]["evaluate"]["runtime"] = "2000 * attempt"  # 6000 min at the 3rd attempt > 3 days
    del profile["slurm-requeue"]  # kill-shared without requeue: a preempted job would just fail
    profile_file.write_text(yaml.safe_dump(profile))
    hf_home = tmp_path / "hf"
    hf_home.write_text("a file, not a folder")

    env = koa_env(local_slurm, HF_HOME=str(hf_home))
    del env["SLURM_ACCOUNT"]
    proc = doctor(workdir, env)
    assert proc.returncode == 2
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    expected = [
        "partition 'gpu-h200' does not exist on this cluster",
        "partition 'gpu' has no GPU type NV-B200",
        "rule evaluate: runtime at attempt 3 is 6000 minutes, more than any partition allows (4320 minutes on gpu, kill-shared)",
        "slurm_account '$SLURM_ACCOUNT' is not set: export SLURM_ACCOUNT=",
        f"Hugging Face cache {hf_home} is not a writable folder",
        "partition(s) kill-shared are preemptible: set slurm-requeue: true",
        "job status: the profile asks sacct, but this cluster keeps no accounting (AccountingStorageType="
        "accounting_storage/none): sacct never reports a job and the workflow would wait forever; add "
        "`slurm-status-command: squeue` to profiles/koa/config.v8+.yaml",
    ]
    assert len(failures) == len(expected), proc.stdout
    for fragment in expected:
        assert any(fragment in line for line in failures), (fragment, proc.stdout)
    assert "7 check(s) failed for profile profiles/koa" in proc.stderr


def test_controller_job_runs_snakemake_with_the_profile(local_slurm, tmp_path):
    """profiles/koa/controller.sbatch: the controller as a SLURM job (here a dry run), log under logs/."""
    workdir = copy_workflow(tmp_path)
    (workdir / "logs").mkdir()
    with_squeue_status(workdir)  # doctor runs first, and this cluster keeps no accounting
    env = koa_env(local_slurm, KOAML_VENV=str(VENV_BIN.parent), KOAML_SCRATCH=str(tmp_path / "scratch"))
    job = subprocess.run(["sbatch", "--parsable", "profiles/koa/controller.sbatch", "-n"], cwd=workdir, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    deadline = time.time() + 240
    while (state := next(j for j in slurm_jobs(env) if j["JobId"] == job)["JobState"]) in ("PENDING", "RUNNING"):
        assert time.time() < deadline, "controller job did not finish"
        time.sleep(2)
    log = (workdir / f"logs/controller-{job}.log").read_text()
    assert state == "COMPLETED", log
    assert "ok    partition 'kill-shared' exists" in log
    assert "This was a dry-run" in log
    assert (tmp_path / "scratch/hf").is_dir()  # env.sh put the HF cache on "scratch"


# ------------------------------------------------------------------------------- the demo, end to end


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.time() + timeout
    while not (value := predicate()):
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}:\n{log.read_text()[-5000:]}")
        time.sleep(1)
    return value


SLURM_RUN = "tiny-lora"  # a LoRA run has every kind of job: build, prepare, train, merge, evaluate
SLURM_SEARCH = "tiny-search"  # a search of 2 trials in one round, each evaluated on the validation benchmark
VALIDATION = "config/benchmarks/demo_arith_mc_val.yaml"


@pytest.fixture(scope="module")
def slurm_demo(local_slurm, tmp_path_factory):
    """The demo cut to its LoRA run plus a small search (its trials are SLURM jobs too), its two benchmarks evaluated
    in one job per model (evaluation.group_by_model), run with `snakemake --profile profiles/koa` on the local
    cluster, secrets in the environment; the training job is requeued (preempted) once it has trained a few steps."""
    workdir = copy_workflow(tmp_path_factory.mktemp("koa"))
    config = workdir / "config/config.yaml"
    search = {
        "space": {"training.learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}},
        "objective": {"benchmark": VALIDATION, "metric": "acc"},
        "n_trials": 2,
        "parallel": 2,
    }
    config.write_text(
        config.read_text().split("runs:")[0]
        + f"runs:\n  {SLURM_RUN}: {{base: tiny, recipe: config/recipes/demo_lora.yaml}}\n"
        f"  {SLURM_SEARCH}: {{base: tiny, recipe: config/recipes/demo_lora.yaml, search: {json.dumps(search)},"
        " overrides: {training: {max_steps: 10}}}\n"
        "benchmarks: [config/benchmarks/demo_arith_mc.yaml, config/benchmarks/demo_arith_gen.yaml]\n"
        "evaluation: {group_by_model: true}\n"
        "recipe_overrides: {training: {max_steps: 100}}\n"  # long enough to be preempted once it has logged a loss
    )
    env = koa_env(local_slurm, **CANARIES)
    log = workdir / "controller.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "snakemake"), "--profile", "profiles/koa", *LAPTOP], cwd=workdir,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    train_log = workdir / f"logs/train/{SLURM_RUN}.log"

    def running_training_job():
        jobs = [j for j in slurm_jobs(env) if j.get("Comment") == f"rule_train_wildcards_{SLURM_RUN}"]
        trained = train_log.is_file() and "'loss'" in train_log.read_text()
        return jobs[0]["JobId"] if jobs and jobs[0]["JobState"] == "RUNNING" and trained else None

    try:
        job = wait_for(running_training_job, 900, f"{SLURM_RUN}'s training to log a loss", proc, log)
        subprocess.run(["scontrol", "requeue", job], env=env, check=True)
        assert proc.wait(timeout=1800) == 0, log.read_text()[-8000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return workdir, env, job


@pytest.mark.slow
def test_each_rule_ran_on_its_partition_with_its_gpu(slurm_demo):
    from koaml.configfiles import load_yaml
    from koaml.memory import estimate_eval_memory
    from koaml.recipe import read_recipe
    from koaml.resources import evaluation_gpu, training_gpu
    from koaml.shapes import model_shape

    workdir, env, _ = slurm_demo
    jobs = [j for j in slurm_jobs(env) if j.get("WorkDir") == str(workdir)]
    assert {rule_of(j) for j in jobs} == CPU_RULES | GPU_RULES  # the light rules ran on the login node
    shape = model_shape(str(workdir / "results/base/tiny/model"))
    for job in jobs:
        rule, wildcards = rule_of(job), job["Comment"].split("_wildcards_")[1]
        assert job["JobState"] == "COMPLETED", job
        if rule in CPU_RULES:
            assert (job["Partition"], job.get("TresPerNode", "(null)")) == ("shared", "(null)"), job
            continue
        if rule == "train":
            gpu = training_gpu(read_recipe(workdir / f"results/runs/{wildcards}/config.yaml"), shape)
        elif rule == "evaluate_trial":
            gpu = evaluation_gpu(load_yaml(workdir / "results/benchmarks/demo_arith_mc_val.yaml"), shape)
        else:  # one job for both benchmarks: the GPU of the more demanding one
            suites = [load_yaml(workdir / f"results/benchmarks/{b}.yaml") for b in ("demo_arith_mc", "demo_arith_gen")]
            gpu = evaluation_gpu(max(suites, key=lambda b: estimate_eval_memory(b, shape).total_gb), shape)
        assert gpu.partitions[0] == "gpu" and not gpu.preemptible  # a tiny model needs no preemptible H100
        assert (job["Partition"], job["TresPerNode"]) == ("gpu", f"gres:{gpu.gres}"), job


@pytest.mark.slow
def test_preempted_training_resumes_from_its_checkpoint(slurm_demo):
    workdir, env, requeued = slurm_demo
    job = next(j for j in slurm_jobs(env) if j["JobId"] == requeued)
    assert job["Restarts"] == "1" and job["JobState"] == "COMPLETED"
    summary = json.loads((workdir / f"results/runs/{SLURM_RUN}/trained/train_summary.json").read_text())
    step = int(Path(summary["resumed_from"]).name.removeprefix("checkpoint-"))
    assert step > 0  # resumed where SIGTERM stopped it, not from step 0
    assert summary["global_step"] > step
    assert not (workdir / f"results/checkpoints/{SLURM_RUN}").exists() or not any(
        (workdir / f"results/checkpoints/{SLURM_RUN}").iterdir()
    )


@pytest.mark.slow
def test_demo_results_are_complete_on_slurm(slurm_demo):
    import pandas as pd

    workdir, _, _ = slurm_demo
    table = pd.read_csv(workdir / "results/compare/summary.csv")
    assert list(table["run"]) == [SLURM_RUN] * 2 + [SLURM_SEARCH] * 2 and set(table["base_model"]) == {"tiny"}
    assert (table["status"] == "ok").all()
    assert len(pd.read_csv(workdir / "results/compare/scores.csv")) == 3 * 2  # tiny, the run, the search; 2 benchmarks
    trials = pd.read_csv(workdir / f"results/search/{SLURM_SEARCH}/trials.csv")
    assert list(trials.trial) == [f"{SLURM_SEARCH}_t1", f"{SLURM_SEARCH}_t2"] and (trials.state == "COMPLETE").all()
    assert (workdir / "results/report/index.html").is_file()
    assert list((workdir / "logs/slurm").rglob("*.log"))  # one SLURM log per job, under logs/


@pytest.mark.slow
def test_no_secret_in_job_scripts_logs_or_results_on_slurm(slurm_demo):
    workdir, env, _ = slurm_demo
    scripts = {}
    for job in slurm_jobs(env):
        if job.get("WorkDir") == str(workdir):
            proc = subprocess.run(
                ["scontrol", "write", "batch_script", job["JobId"], "-"], env=env, capture_output=True, text=True
            )
            assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
            scripts[f"batch script of job {job['JobId']}"] = proc.stdout
    assert not secret_leaks(workdir, extra=scripts)


# ------------------------------------------------------------------------------ planning (no cluster)

LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}  # fmt: skip


def plan_with_profile(workdir: Path, recipe: str, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --profile profiles/koa -n` on an experiment training a 70B model (config.json only) with ``recipe``."""
    model = workdir / "llama70b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_70B))
    (workdir / "experiment.yaml").write_text(yaml.safe_dump({
        "experiment": "koa-70b", "base_models": {"llama70b": {"model_name": str(model)}},
        "runs": {"big": {"base": "llama70b", "recipe": recipe, "overrides": {"data": {
            "train_dataset": {"dataset_name": "resources/demo/data/arith_train.jsonl", "split": "train"}}}}},
        "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    }))  # fmt: skip
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "SLURM_ACCOUNT": "koa-test"}
    return subprocess.run([str(VENV_BIN / "snakemake"), "--profile", "profiles/koa", "--configfile", "experiment.yaml",
                           "-n", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_dry_run_shows_each_jobs_gpu(workflow_dir):
    proc = plan_with_profile(
        workflow_dir,
        "config/recipes/llama_70b_qlora.yaml",
        "--config",
        "benchmark_overrides={model: {dtype: bfloat16}}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planned = proc.stdout + proc.stderr
    gres = {line.split("gres=")[1].split(",")[0] for line in planned.splitlines() if "gres=gpu" in line}
    assert gres == {"gpu:NV-H100:1", "gpu:NV-H100:2"}, planned[-3000:]  # QLoRA training; bf16 evaluation


def test_a_job_that_fits_no_koa_gpu_stops_before_anything_runs(workflow_dir):
    recipe = workflow_dir / "full70b.yaml"
    recipe.write_text((workflow_dir / "config/recipes/llama_8b_full.yaml").read_text())
    proc = plan_with_profile(workflow_dir, str(recipe), "--config", "benchmark_overrides={model: {dtype: bfloat16}}")
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert (
        "needs ~" in message and "more than the largest bfloat16-capable KOA GPU (nvidia_h200_nvl, 141 GB)" in message
    ), message[-3000:]
    assert "To use less memory: peft.type: qlora" in message
    assert not (workflow_dir / "results").exists()
