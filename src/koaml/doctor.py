"""``koaml doctor``: check a SLURM profile against the live cluster before anything is queued.

It reads the profile (``config.v8+.yaml``) and its partition file, asks SLURM (``sinfo``,
``sacctmgr``) what the cluster has, and reports one line per check: partitions exist, their GPU types
exist, preemptible ones are requeued, every rule's time and memory (at its last retry) fit the
partitions, the account is valid, job status can be queried (sacct needs an accounting database), and the
Hugging Face cache is writable. Any failed check makes the
command exit non-zero.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

PROFILE_FILE = "config.v8+.yaml"
GPU_RULES = (
    "train",
    "evaluate",
    "evaluate_model",
    "evaluate_trial",
    "evaluate_step",
)  # the rules with a sized GPU request (workflow/rules/*.smk)


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "warn" or "FAIL"
    message: str

    def __str__(self) -> str:
        return f"{self.status:<5} {self.message}"


@dataclass(frozen=True)
class PartitionInfo:
    """What the live cluster says of one partition."""

    max_minutes: float  # inf when UNLIMITED
    max_mem_mb: int  # the largest node's memory
    gpu_types: frozenset[str]


def slurm_minutes(text: str) -> float:
    """SLURM's time format ([D-]HH:MM:SS, MM:SS, MM, UNLIMITED) in minutes."""
    if text in ("UNLIMITED", "infinite"):
        return float("inf")
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = parts
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def parse_sinfo(text: str) -> dict[str, PartitionInfo]:
    """Parse ``sinfo -h -o '%P|%l|%m|%G'`` (one line per partition and node group)."""
    limits: dict[str, float] = {}
    memory: dict[str, int] = {}
    gpus: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, time_limit, mem, gres = line.split("|")
        name = name.rstrip("*")
        limits[name] = slurm_minutes(time_limit)
        memory[name] = max(memory.get(name, 0), int(mem.rstrip("+")))
        types = gpus.setdefault(name, set())
        for item in gres.split(","):
            fields = item.split("(")[0].split(":")
            if fields[0] == "gpu" and len(fields) == 3:
                types.add(fields[1])
    return {name: PartitionInfo(limits[name], memory[name], frozenset(gpus[name])) for name in limits}


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def resource_at_attempt(value, attempt: int) -> float | None:
    """A profile resource (a number or an expression of ``attempt``) at one attempt; None if not numeric."""
    try:
        result = eval(str(value), {"__builtins__": {}}, {"attempt": attempt})  # the profile's own expressions
    except Exception:
        return None
    return result if isinstance(result, (int, float)) else None


def load_profile(profile_dir: str | Path) -> tuple[dict, dict]:
    """The profile's settings and its partition file (``{}`` if it names none)."""
    profile_dir = Path(profile_dir)
    settings = yaml.safe_load((profile_dir / PROFILE_FILE).read_text())
    partition_file = settings.get("slurm-partition-config")
    partitions = yaml.safe_load(Path(partition_file).read_text())["partitions"] if partition_file else {}
    return settings, partitions


def check_partitions(partitions: dict, cluster: dict[str, PartitionInfo], partition_file: str) -> list[Check]:
    """Every partition and GPU type in the partition file exists; its time limit is within the cluster's."""
    checks = []
    for name, limits in partitions.items():
        if name not in cluster:
            checks.append(
                Check(
                    "FAIL",
                    f"{partition_file}: partition '{name}' does not exist on this cluster "
                    f"(it has: {', '.join(sorted(cluster))})",
                )
            )
            continue
        live = cluster[name]
        missing = sorted(set(limits.get("available_gpu_models") or []) - live.gpu_types)
        if missing:
            checks.append(
                Check(
                    "FAIL",
                    f"{partition_file}: partition '{name}' has no GPU type {', '.join(missing)} "
                    f"(sinfo shows: {', '.join(sorted(live.gpu_types)) or 'no GPUs'})",
                )
            )
        declared = limits.get("max_runtime")
        if declared is not None and slurm_minutes(str(declared)) > live.max_minutes:
            checks.append(
                Check(
                    "FAIL",
                    f"{partition_file}: partition '{name}' max_runtime {declared} exceeds "
                    f"the cluster's limit of {live.max_minutes:g} minutes",
                )
            )
        if not missing:
            gpus = limits.get("available_gpu_models")
            checks.append(
                Check("ok", f"partition '{name}' exists" + (f" with GPU types {', '.join(gpus)}" if gpus else ""))
            )
    return checks


def check_rule_resources(settings: dict, partitions: dict, cluster: dict[str, PartitionInfo]) -> list[Check]:
    """Each rule's runtime and memory at its last retry fit a partition it may be sent to."""
    attempts = int(settings.get("retries", 0)) + 1
    defaults = settings.get("default-resources") or {}
    rules = {"(default)": {}, **(settings.get("set-resources") or {})}
    checks = []
    for rule, resources in rules.items():
        merged = {**defaults, **resources}
        named = merged.get("slurm_partition")
        needs_gpu = rule in GPU_RULES or "gres" in merged
        candidates = (
            [named]
            if named
            else [p for p, limits in partitions.items() if p in cluster and bool(limits.get("max_gpu")) == needs_gpu]
            or list(cluster)
        )
        if named and named not in cluster:
            checks.append(Check("FAIL", f"rule {rule}: slurm_partition '{named}' does not exist on this cluster"))
            continue
        limits = {
            "runtime": (lambda p: cluster[p].max_minutes, "minutes"),
            "mem_mb": (lambda p: cluster[p].max_mem_mb, "MB"),
        }
        for key, (limit_of, unit) in limits.items():
            if key not in merged:
                continue
            need = resource_at_attempt(merged[key], attempts)
            if need is None:
                checks.append(Check("warn", f"rule {rule}: {key} {merged[key]!r} is not a number; not checked"))
                continue
            best = max(limit_of(p) for p in candidates)
            if need > best:
                checks.append(
                    Check(
                        "FAIL",
                        f"rule {rule}: {key} at attempt {attempts} is {need:g} {unit}, more than "
                        f"any partition allows ({best:g} {unit} on {', '.join(candidates)}); "
                        "lower it or the number of retries",
                    )
                )
    if not any(c.status == "FAIL" for c in checks):
        checks.append(Check("ok", f"every rule's runtime and memory fit its partitions up to attempt {attempts}"))
    return checks


def check_preemption(settings: dict, partitions: dict) -> Check:
    """Jobs may go to preemptible partitions only if SLURM requeues them (training then resumes)."""
    from koaml.gpus import PREEMPTIBLE_PARTITIONS

    preemptible = sorted(set(partitions) & set(PREEMPTIBLE_PARTITIONS))
    if not preemptible:
        return Check("ok", "no preemptible partition in the partition file")
    if not settings.get("slurm-requeue"):
        return Check(
            "FAIL",
            f"partition(s) {', '.join(preemptible)} are preemptible: set slurm-requeue: true so that "
            "SLURM requeues preempted jobs (training resumes from its checkpoint)",
        )
    return Check("ok", f"preempted jobs on {', '.join(preemptible)} are requeued; training resumes from checkpoints")


def check_account(settings: dict) -> Check:
    """The account from the profile (usually ``$SLURM_ACCOUNT``) is set and known to SLURM's accounting."""
    raw = str((settings.get("default-resources") or {}).get("slurm_account", ""))
    account = os.path.expandvars(raw).strip("'\"")
    if not account or "$" in account:
        return Check(
            "FAIL",
            f"slurm_account {raw!r} is not set: export SLURM_ACCOUNT=<your allocation> "
            "(list yours with: sacctmgr show assoc user=$USER format=account)",
        )
    user = getpass.getuser()
    try:
        known = _run("sacctmgr", "-nP", "show", "assoc", f"user={user}", "format=account").split()
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        return Check("warn", f"account '{account}': cannot be verified (no SLURM accounting database answers)")
    if account.lower() not in {a.lower() for a in known}:
        return Check("FAIL", f"account '{account}' is not one of {user}'s: {', '.join(sorted(set(known))) or 'none'}")
    return Check("ok", f"account '{account}' is valid for {user}")


def check_status_command(settings: dict, profile_file: str) -> Check:
    """Snakemake learns that a SLURM job ended from ``sacct`` (the executor plugin's default where sacct is
    installed) or ``squeue``; sacct without an accounting database never reports a job, and the workflow waits
    forever after its first job."""
    command = settings.get("slurm-status-command") or ("sacct" if shutil.which("sacct") else "squeue")
    if command == "squeue":
        return Check("ok", "job status from squeue (slurm-status-command: squeue)")
    fix = f"add `slurm-status-command: squeue` to {profile_file}"
    try:
        config = _run("scontrol", "show", "config")
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
        config = ""
    storage = re.search(r"^AccountingStorageType\s*=\s*(\S+)", config, re.M)
    if storage and storage.group(1).endswith("/none"):
        return Check(
            "FAIL",
            f"job status: the profile asks sacct, but this cluster keeps no accounting (AccountingStorageType="
            f"{storage.group(1)}): sacct never reports a job and the workflow would wait forever; {fix}",
        )
    try:
        _run("sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now-1hour")
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        why = (getattr(exc, "stderr", "") or str(exc)).strip()
        return Check("FAIL", f"job status: the profile asks sacct, which fails here ({why}); {fix}")
    return Check("ok", "job status from sacct (the accounting database answers)")


def check_hf_cache() -> Check:
    """The Hugging Face cache is writable (and, on KOA, not in the 50 GB home)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    try:
        Path(home).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home):
            pass
    except OSError as exc:
        return Check("FAIL", f"Hugging Face cache {home} is not a writable folder ({exc.strerror})")
    if "HF_HOME" not in os.environ:
        return Check(
            "warn", f"HF_HOME is not set: the cache goes to {home} (put it on scratch: source profiles/koa/env.sh)"
        )
    return Check("ok", f"Hugging Face cache {home} is writable")


def doctor(profile_dir: str | Path) -> list[Check]:
    """All checks of a profile against the cluster the SLURM commands talk to."""
    settings, partitions = load_profile(profile_dir)
    try:
        cluster = parse_sinfo(_run("sinfo", "-h", "-o", "%P|%l|%m|%G"))
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return [
            Check(
                "FAIL", f"SLURM does not answer (sinfo: {getattr(exc, 'stderr', '') or exc}); run this on a login node"
            )
        ]
    partition_file = settings.get("slurm-partition-config", "")
    return [
        *check_partitions(partitions, cluster, partition_file),
        *check_rule_resources(settings, partitions, cluster),
        check_preemption(settings, partitions),
        check_account(settings),
        check_status_command(settings, str(Path(profile_dir) / PROFILE_FILE)),
        check_hf_cache(),
    ]
