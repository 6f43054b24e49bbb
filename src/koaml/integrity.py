"""Completeness markers for finished outputs: damage done after a job finished is noticed, not trusted.

A job writes ``complete.json`` last into its output folder: the size and SHA-256 of every other file. When
the workflow is parsed, each finished folder is checked cheaply (sizes, and hashes only of files whose
modification time changed); the comparison checks the hashes of what it reads. A folder whose files were
deleted, truncated or edited since is reported by name and never compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from koaml.configfiles import ConfigError
from koaml.experiment import evaluation_dir
from koaml.io import write_json

MARKER = "complete.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mark_complete(folder: str | Path) -> None:
    """Write ``folder``'s marker: call it after every other file is written."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    write_json(folder / MARKER, {"files": files})


def damage(folder: str | Path, thorough: bool = False) -> str | None:
    """Why the finished output ``folder`` cannot be trusted, or None when it is intact (or not there at all).

    Cheap by default: sizes, and the hash of a file whose modification time changed; ``thorough`` hashes every
    file. A folder without a marker (written before koa-ml marked its outputs, or by lm-eval itself) has
    nothing to check against: what it lacks shows as missing results."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MARKER} is damaged"
    for name, expected in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != expected["size"]:
            return f"{name} changed since it was written ({stat.st_size} bytes, written {expected['size']})"
        if (thorough or stat.st_mtime_ns != expected["mtime_ns"]) and _sha256(path) != expected["sha256"]:
            return f"{name} changed since it was written (its SHA-256 differs)"
    return None


def check_finished_outputs(experiment, root: str | Path = ".") -> None:
    """Raise ConfigError naming every finished evaluation of ``experiment`` that was damaged since it was
    written, with how to have it re-run: Snakemake would take it as done."""
    folders = [evaluation_dir(m, b) for m in experiment.evaluated_models for b in experiment.benchmarks]
    found = {folder: why for folder in folders if (why := damage(Path(root) / folder))}
    if found:
        lines = "\n".join(f"  {folder}: {why}" for folder, why in found.items())
        moves = "; ".join(f"mv {folder} {folder}.damaged" for folder in found)
        raise ConfigError(
            f"finished results were changed or deleted after they were written:\n{lines}\n"
            f"Move them away to have them re-run ({moves}), or restore them from a backup."
        )
