"""The project's local SLURM cluster (tests/slurm/local-slurm.sh) mirrors KOA's partitions and GPUs."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "tests/slurm/local-slurm.sh"
KOA_PARTITIONS = {"sandbox", "shared", "shared-long", "exclusive", "exclusive-long", "gpu", "gpu-sandbox", "kill-shared", "kill-exclusive"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0 or (shutil.which("slurmctld") is None and shutil.which("apt-get") is None):
        pytest.skip("a local SLURM needs root and Debian's slurm packages (`make test` installs them as root)")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, KOAML_SLURM_DIR=str(state))
    out = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    subprocess.run([str(SCRIPT), "stop"], env=env, timeout=60)


def run(env, *cmd):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def test_partitions_are_koas(slurm):
    partitions = {p.rstrip("*") for p in run(slurm, "sinfo", "-h", "-o", "%P").split()}
    assert partitions == KOA_PARTITIONS
    assert "gpu:NV-A30:2" in run(slurm, "sinfo", "-h", "-o", "%G")


def test_gpu_job_gets_its_partition_and_gres(slurm, tmp_path):
    out = tmp_path / "job.out"
    job = run(
        slurm, "sbatch", "--parsable", "-p", "gpu", "--gres=gpu:NV-A30:1", "-t", "5", "--mem=500", "-o", str(out),
        "--wrap", "echo partition=$SLURM_JOB_PARTITION gpus=$SLURM_GPUS_ON_NODE",
    ).strip()  # fmt: skip
    deadline = time.time() + 60
    while "JobState=COMPLETED" not in (info := run(slurm, "scontrol", "show", "job", job)):
        assert "FAILED" not in info and time.time() < deadline, info
        time.sleep(0.5)
    assert "TresPerNode=gres:gpu:NV-A30:1" in info and "Partition=gpu" in info
    assert out.read_text().split() == ["partition=gpu", "gpus=1"]
