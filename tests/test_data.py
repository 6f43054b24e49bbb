"""Dataset preparation: formats, templates, stats. Bad data is in the catalog, tests/test_bad_inputs.py."""

import json

import pytest
from conftest import THINKING_TEMPLATE

from koaml.data import prepare
from koaml.datafiles import read_rows
from koaml.formats import detect_format, to_training_row
from koaml.recipe import Recipe
from koaml.sections import DatasetSpec


def jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("template", "prompt", "completion"),
    [
        ("none", "Q", "A"),
        ("chatml", "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", "A<|im_end|>"),
        (
            "llama3",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "A<|eot_id|>",
        ),
    ],
)
def test_prompt_completion_templates(template, prompt, completion):
    row = {"prompt": "Q", "completion": "A", "_source": "x:1"}
    assert to_training_row(row, "prompt_completion", template, "text") == {"prompt": prompt, "completion": completion}


def test_alpaca_template():
    row = {"prompt": "Add 2 and 3", "completion": "5", "_source": "x:1"}
    out = to_training_row(row, "prompt_completion", "alpaca", "text")
    assert out["prompt"].endswith("### Instruction:\nAdd 2 and 3\n\n### Response:\n") and out["completion"] == "5"


def test_model_template_makes_chat_prompt_completion():
    # conversational prompt/completion, so that TRL's completion_only_loss masks the prompt (tests/test_real_model.py)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    row = to_training_row({"messages": messages, "_source": "x:1"}, "messages", "model", "text")
    assert row == {"prompt": messages[:1], "completion": messages[1:]}


def test_prepare_writes_splits_and_stats(tmp_path, tiny_model):
    rows = [{"prompt": f"Question: What is {i} plus 1?\nAnswer:", "completion": f" {i + 1}"} for i in range(40)]
    rows.append({"prompt": "Question:", "completion": " very long" * 40})  # truncated, still learnable
    rows.append({"prompt": "Question: " + "very long " * 40, "completion": " x"})  # nothing left to learn: dropped
    path = jsonl(tmp_path, rows)
    recipe = {
        "model": {"model_max_length": 32},
        "data": {
            "train_dataset": {"dataset_name": path},
            "eval_fraction": 0.1,
            "template": "none",
            "target_column": "text",
        },
        "training": {"trainer_type": "sft", "seed": 1, "completion_only_loss": True},
    }
    stats = prepare(Recipe(recipe, "test"), str(tiny_model), tmp_path / "out")
    assert stats["rows"] + stats["eval_rows"] == 41 and stats["too_long_rows"] == 1
    assert stats["truncated_rows"] == 1 and stats["format"] == "prompt_completion"
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert len(train) == stats["rows"] and set(train[0]) == {"prompt", "completion"}
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_alpaca_columns_become_prompt_completion(tmp_path):
    path = jsonl(
        tmp_path,
        [
            {"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    )
    rows = read_rows(DatasetSpec(path, None, "train"))
    fmt = detect_format(rows, "text")
    assert fmt == "alpaca"
    assert to_training_row(rows[0], fmt, "none", "text") == {"prompt": "Add\n\n2 and 3", "completion": "5"}
    assert (
        to_training_row(rows[1], fmt, "chatml", "text")["prompt"]
        == "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prepare_data_warns_when_target_column_is_ignored(tmp_path, tiny_model, caplog):
    """prepare_data reads hub datasets, which the parse cannot: it warns about a target_column their format does not use."""
    path = jsonl(tmp_path, [{"instruction": "Add 2 and 3", "input": "", "output": "5"}] * 4)
    recipe = {
        "model": {"model_max_length": 64},
        "data": {
            "train_dataset": {"dataset_name": path},
            "eval_fraction": 0,
            "template": "none",
            "target_column": "output",
        },
        "training": {"trainer_type": "sft", "seed": 1, "completion_only_loss": True},
    }
    prepare(Recipe(recipe, "test"), str(tiny_model), tmp_path / "out")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{path}: data.target_column: ignored; the data is in alpaca format, which has its own columns "
        "(target_column only names the column of plain-text rows)"
    ]
    caplog.clear()
    recipe["data"]["target_column"] = "text"  # the default: the resolved recipe cannot tell whether it was written
    prepare(Recipe(recipe, "test"), str(tiny_model), tmp_path / "out2")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_enable_thinking_reaches_the_chat_template(tmp_path, tiny_model):
    """data.enable_thinking goes with every row to TRL, which renders the template with it; counted alike."""
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = THINKING_TEMPLATE
    tokenizer.save_pretrained(tmp_path / "tok")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "completion": "2"}) + "\n")
    recipe = {
        "model": {"model_max_length": 64},
        "data": {"train_dataset": {"dataset_name": str(data)}, "eval_fraction": 0.0, "template": "model",
                 "target_column": "text", "enable_thinking": False},
        "training": {"trainer_type": "sft", "seed": 1, "completion_only_loss": True},
    }  # fmt: skip
    prepare(Recipe(recipe, "test"), str(tmp_path / "tok"), tmp_path / "out")
    (row,) = [json.loads(line) for line in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    assert row["chat_template_kwargs"] == {"enable_thinking": False}
    assert "<think>\n\n</think>" in apply_chat_template(row, tokenizer)["prompt"]  # what TRL trains on
    del row["chat_template_kwargs"]
    assert "<think>" not in apply_chat_template(row, tokenizer)["prompt"]


def test_hub_rows_with_nothing_to_learn_are_dropped_with_a_warning(caplog):
    """A local file's empty target is an error naming its row (the catalog's empty-completion); a hub dataset,
    which the user cannot edit, loses such rows with a warning, unless none is left."""
    from koaml.configfiles import ConfigError
    from koaml.formats import learnable_rows

    rows = [
        {"prompt": "1 plus 1?", "completion": " 2", "_source": "hub[train] row 0"},
        {"prompt": "2 plus 2?", "completion": "  ", "_source": "hub[train] row 1"},
    ]
    kept = learnable_rows(rows, "prompt_completion", "text", "hub: data.train_dataset", whole=True, editable=False)
    assert kept == rows[:1]
    assert "hub: data.train_dataset: 1 rows with an empty target dropped (the first: hub[train] row 1)" in caplog.text
    with pytest.raises(ConfigError, match="every row's target is empty"):
        learnable_rows(rows[1:], "prompt_completion", "text", "hub", whole=True, editable=False)
    with pytest.raises(ConfigError, match=r"hub\[train\] row 1: 'completion' is empty"):
        learnable_rows(rows, "prompt_completion", "text", "hub", whole=True, editable=True)


def test_nan_and_null_text_is_refused_not_trained_as_nan(tmp_path):
    """pandas and JSON write an empty cell as NaN (or null): in a text column it would be trained as "nan". Every
    format's columns are checked (a CSV's empty cells read as null), the prompts of chat rows' roles too; an
    optional empty Alpaca input is left out of the prompt."""
    from koaml.configfiles import ConfigError

    for value, word in ((float("nan"), "NaN"), (None, "null")):
        for fmt_row in ({"prompt": "Q", "completion": value}, {"instruction": value, "output": "A"}, {"text": value}):
            key = next(k for k, v in fmt_row.items() if v is value)
            with pytest.raises(ConfigError, match=rf"x:1: '{key}' is {word} \(an empty cell\?\)"):
                detect_format([dict(fmt_row, _source="x:1")], "text")
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\nQ,A\nQ2,\n")
    with pytest.raises(ConfigError, match=r"d.csv:row 2: 'completion' is null"):
        detect_format(read_rows(DatasetSpec(str(path), None, "train")), "text")
    row = {"instruction": "Add", "input": float("nan"), "output": "5", "_source": "x:1"}
    assert to_training_row(row, "alpaca", "none", "text") == {"prompt": "Add", "completion": "5"}
    chat = [{"role": "human", "content": "Q"}]
    with pytest.raises(ConfigError, match=r"x:1: prompt\[0\].role: 'human' is not a chat role"):
        detect_format([{"prompt": chat, "_source": "x:1"}], "text")
