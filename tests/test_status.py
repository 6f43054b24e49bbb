"""`koaml status`: each model's stages from the workflow's files, Snakemake's markers and SLURM's queue."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

from koaml.status import status, table


def states(steps) -> dict[tuple[str, str], str]:
    return {(s.model, s.stage): s.state for s in steps}


@pytest.fixture
def demo(workflow_dir, monkeypatch):
    from koaml.config import load_experiment
    from koaml.configfiles import load_yaml

    monkeypatch.chdir(workflow_dir)
    return workflow_dir, load_experiment(load_yaml("config/config.yaml"))


def koaml_status(workdir: Path, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "koaml.cli", "status"], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_done_failed_running_pending_and_not_planned(demo):
    workdir, exp = demo
    for folder in ("results/base/tiny/model", "results/data/tiny-lora", "results/runs/tiny-lora/trained"):
        (workdir / folder).mkdir(parents=True)
    log = workdir / "logs/train/tiny-qlora.log"
    log.parent.mkdir(parents=True)
    log.write_text("step 1\nTraceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory\n")
    # tiny-full is training: Snakemake's incomplete marker on its output, the workflow's lock, a progress file
    marker = workdir / ".snakemake/incomplete" / urlsafe_b64encode(b"results/runs/tiny-full/trained").decode()
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    (workdir / ".snakemake/locks").mkdir()
    (workdir / ".snakemake/locks/0.output.lock").write_text("")
    progress = workdir / "results/checkpoints/tiny-full/abc123/progress.json"
    progress.parent.mkdir(parents=True)
    progress.write_text(json.dumps({"step": 40, "max_steps": 100, "loss": 1.2345, "eta_s": 90.0}))

    steps = status(exp, workdir)
    got = states(steps)
    assert (
        got[("tiny", "build")] == "done"
        and got[("tiny-lora", "prepare")] == "done"
        and got[("tiny-lora", "train")] == "done"
    )
    assert got[("tiny-lora", "merge")] == "pending" and got[("tiny-full", "merge")] == "not planned"
    assert got[("tiny-qlora", "train")] == "failed" and got[("tiny-full", "train")] == "running"
    assert got[("tiny", "eval demo_arith_mc")] == "pending" and got[("(experiment)", "compare")] == "pending"
    by_stage = {(s.model, s.stage): s for s in steps}
    assert "torch.OutOfMemoryError: CUDA out of memory" in by_stage[("tiny-qlora", "train")].detail
    assert by_stage[("tiny-full", "train")].detail == "step 40/100, loss 1.234, ~1m30s left"
    assert by_stage[("tiny-full", "train")].elapsed.endswith("s")

    (workdir / ".snakemake/locks/0.output.lock").unlink()  # the workflow died: its job is no longer running
    assert states(status(exp, workdir))[("tiny-full", "train")] == "failed"
    text = table(status(exp, workdir))
    assert (
        "tiny-qlora" in text
        and "rerun with --rerun-incomplete" in text
        and "3 done, 2 failed, 14 pending, 1 not planned" in text
    )


def test_the_command_reads_the_experiment_files_given(demo):
    workdir, _ = demo
    (workdir / "results/eval/tiny/demo_arith_mc").mkdir(parents=True)
    out = koaml_status(workdir)
    assert "tiny          eval demo_arith_mc   done" in out and out.rstrip().endswith("1 not planned")
    proc = subprocess.run(
        [sys.executable, "-m", "koaml.cli", "status", "--configfile", "config/examples/evaluate_only.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "smollm2       convert" in proc.stdout and "tiny-lora" not in proc.stdout


def test_a_slurm_job_shows_its_id_and_state(local_slurm, demo):
    """A job on the real local SLURM, submitted as the executor plugin does (its comment names rule and
    wildcards), is shown running or queued with its job id, and gone from the table once cancelled."""
    workdir, _ = demo
    env = dict(local_slurm)
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "shared",
            "-t",
            "5",
            "--mem=100",
            "--comment",
            "rule_train_wildcards_tiny-lora",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 120",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    try:
        deadline = time.time() + 60
        while (
            "RUNNING"
            not in subprocess.run(
                ["squeue", "-j", job, "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout
        ):
            assert time.time() < deadline
            time.sleep(0.5)
        line = next(
            line
            for line in koaml_status(workdir, env).splitlines()
            if line.startswith("tiny-lora") and " train " in line
        )
        assert "running" in line and job in line
    finally:
        subprocess.run(["scancel", job], env=env, timeout=60)


@pytest.mark.parametrize(("text", "found"), [("", "nothing (an empty file)"), ("- a\n- b\n", "a list")])
def test_an_experiment_file_that_is_no_mapping_is_named(tmp_path, text, found):
    from koaml.cli import _experiment
    from koaml.configfiles import ConfigError

    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"{path}: the top level must be a mapping of keys (experiment:, runs:, benchmarks:, ...); found {found}"
        ),
    ):
        _experiment([str(path)])
