"""The project's local SLURM cluster (tests/slurm/local-slurm.sh) mirrors KOA's partitions and GPUs."""

import subprocess
import time

KOA_PARTITIONS = {
    "sandbox",
    "shared",
    "shared-long",
    "exclusive",
    "exclusive-long",
    "gpu",
    "gpu-sandbox",
    "kill-shared",
    "kill-exclusive",
}


def run(env, *cmd):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def test_partitions_are_koas(local_slurm):
    partitions = {p.rstrip("*") for p in run(local_slurm, "sinfo", "-h", "-o", "%P").split()}
    assert partitions == KOA_PARTITIONS
    assert "gpu:NV-A30:2" in run(local_slurm, "sinfo", "-h", "-o", "%G")


def test_gpu_job_gets_its_partition_and_gres(local_slurm, tmp_path):
    out = tmp_path / "job.out"
    job = run(
        local_slurm, "sbatch", "--parsable", "-p", "gpu", "--gres=gpu:NV-A30:1", "-t", "5", "--mem=500", "-o", str(out),
        "--wrap", "echo partition=$SLURM_JOB_PARTITION gpus=$SLURM_GPUS_ON_NODE",
    ).strip()  # fmt: skip
    deadline = time.time() + 60
    while "JobState=COMPLETED" not in (info := run(local_slurm, "scontrol", "show", "job", job)):
        assert "FAILED" not in info and time.time() < deadline, info
        time.sleep(0.5)
    assert "TresPerNode=gres:gpu:NV-A30:1" in info and "Partition=gpu" in info
    assert out.read_text().split() == ["partition=gpu", "gpus=1"]
