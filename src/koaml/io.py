"""Small file helpers: atomic outputs, JSON/YAML writing, config hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``final`` only if the block succeeds.

    A job killed mid-write leaves a ``.tmp-*`` folder behind, never a ``final`` that looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=True))


def config_hash(data: Any) -> str:
    """Stable short hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def logging_to(path: str | Path) -> Iterator[None]:
    """Send koaml's log records (INFO and up) to the file ``path`` while the block runs (a rule's log)."""
    logger = logging.getLogger("koaml")
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


class DiskSpaceError(RuntimeError):
    """Not enough free disk for a job's outputs; raised before the job starts writing."""


def ensure_free_disk(folder: str | Path, need_gb: float, what: str) -> None:
    """Raise DiskSpaceError naming ``folder`` when its filesystem has less than ``need_gb`` GB free."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    free_gb = shutil.disk_usage(existing).free / 2**30
    if free_gb < need_gb:
        raise DiskSpaceError(
            f"{folder}: {free_gb:.1f} GB free, but {what} needs about {need_gb:.1f} GB; free some space "
            "(e.g. old results/checkpoints), lower training.save_total_limit, or put results/ on scratch"
        )
