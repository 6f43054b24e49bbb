"""A resolved recipe (``results/runs/<run>/config.yaml``, a search's ``best.yaml``) loads again as it was written:
the defaults the resolver fills in are never refused or warned about when the file is read back (issue 40: a GRPO
search failed at its last step on the vLLM keys its trials' resolved recipes hold)."""

import importlib.util
import logging

import pytest
from conftest import REPO

from koaml.io import write_yaml
from koaml.recipe import load_recipe, read_recipe

SHIPPED = sorted(p.name for p in (REPO / "config/recipes").glob("*.yaml"))
VARIANTS = {  # each trainer type with the settings that fill in other keys
    "grpo_vllm": ("demo_grpo_lora.yaml", {"training": {"use_vllm": True}}),
    "dpo_ipo": ("demo_dpo_lora.yaml", {"training": {"loss_type": "ipo", "completion_only_loss": True}}),
    "sft_kept_steps": ("demo_lora.yaml", {"training": {"max_steps": 20, "keep_checkpoints": [5, 10]}}),
    "sft_eval_split": ("demo_full.yaml", {"data": {"eval_fraction": 0.1}, "training": {"eval_steps": 5}}),
}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)
    real = importlib.util.find_spec  # vLLM is a GPU extra: the check of it is not what is tested here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))


@pytest.mark.parametrize(
    "recipe, overrides",
    [(name, None) for name in SHIPPED] + list(VARIANTS.values()),
    ids=SHIPPED + list(VARIANTS),
)
def test_a_resolved_recipe_loads_again_unchanged_and_without_warnings(recipe, overrides, tmp_path, caplog):
    resolved = load_recipe(f"config/recipes/{recipe}", overrides)
    write_yaml(tmp_path / "config.yaml", resolved.as_dict())
    with caplog.at_level(logging.WARNING, logger="koaml"):
        as_job = read_recipe(tmp_path / "config.yaml")  # what a job reads (search_summary, train, merge)
        as_recipe = load_recipe(tmp_path / "config.yaml")  # what a user does with a search's best.yaml
    assert as_job.as_dict() == as_recipe.as_dict() == resolved.as_dict()
    assert not [r.getMessage() for r in caplog.records if r.name == "koaml"]


def test_a_vllm_setting_that_would_be_ignored_is_still_refused():
    from koaml.configfiles import ConfigError

    with pytest.raises(ConfigError, match=r"training\.vllm_mode: only used with training\.use_vllm: true"):
        load_recipe("config/recipes/demo_grpo_lora.yaml", {"training": {"vllm_mode": "server"}})
