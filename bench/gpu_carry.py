"""What bench/gpu_check.sh needs on a lent GPU machine that the machine lacks, into bench/carry/ (git-ignored,
carried by the device tool's `carry: ["bench/carry"]`), under the 64 MiB a call may carry.

- wheels/: the Python 3.12 wheels of the packages the check imports that the machine's image does not hold
  (bench/device_packages.txt, the image's list as the tool library's device/KINDS.md gives it, 2026-11-17), at the versions of
  this venv: the dependency closure of trl, lm-eval, bitsandbytes, datasets, jsonschema; binary wheels for
  manylinux x86_64 / CPython 3.12 where there are, else built here from the sdist (pure Python).
- smollm2/: SmolLM2-135M-Instruct's config and tokenizer, from the GGUF `make` installs. Its weights (94 MB as the
  GGUF, 270 MB in bf16) do not fit a call: the check initialises the same architecture at random, which trains and
  evaluates at the same speed and memory (the scores then mean nothing).

    make gpu-carry        # = .venv/bin/python bench/gpu_carry.py
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, smollm2

CARRY = REPO / "bench/carry"
LIMIT_MB = 60  # of the 64 MiB a device call carries, the working tree's own ~2 MB and a margin left
ROOTS = ("trl", "lm-eval", "bitsandbytes", "datasets", "jsonschema")
DEVICE_PACKAGES = {
    line for line in (REPO / "bench/device_packages.txt").read_text().split("\n") if line and not line.startswith("#")
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)).lower()


def closure(roots=ROOTS, present=DEVICE_PACKAGES) -> dict[str, str]:
    """name -> this venv's version, for the roots and what they require (not extras), less what is present."""
    found: dict[str, str] = {}
    stack = [_name(r) for r in roots]
    while stack:
        name = stack.pop()
        if name in found or name in present:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # a marker-only requirement of older Pythons (enum34, ...)
            continue
        found[name] = dist.version
        stack += [_name(r) for r in dist.requires or [] if "extra ==" not in r]
    return found


def fetch_wheels(packages: dict[str, str], folder: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    for name, version in sorted(packages.items()):
        binary = subprocess.run(
            [*pip, "download", "-q", "--no-deps", "--only-binary", ":all:", "--python-version", "3.12",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64",
             "--platform", "manylinux2014_x86_64", "-d", folder, f"{name}=={version}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if binary.returncode != 0:  # no wheel for that platform: an sdist, pure Python, built here
            subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", folder, f"{name}=={version}"], check=True)


def write_tokenizer(folder: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    with TemporaryDirectory() as tmp:
        model = smollm2(Path(tmp))
        AutoConfig.from_pretrained(model).save_pretrained(folder)
        AutoTokenizer.from_pretrained(model).save_pretrained(folder)


def main() -> None:
    shutil.rmtree(CARRY, ignore_errors=True)
    (CARRY / "wheels").mkdir(parents=True)
    packages = closure()
    fetch_wheels(packages, CARRY / "wheels")
    write_tokenizer(CARRY / "smollm2")
    size_mb = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file()) / 2**20
    print(f"bench/carry: {len(packages)} wheels ({', '.join(sorted(packages))}) and SmolLM2's tokenizer: "
          f"{size_mb:.1f} MB (limit {LIMIT_MB} MB)")  # fmt: skip
    if size_mb > LIMIT_MB:
        raise SystemExit(f"bench/carry is {size_mb:.1f} MB, over {LIMIT_MB} MB: a device call would refuse it")


if __name__ == "__main__":
    main()
