"""Dataset preparation (the prepare_data job): read, convert, split, fit to the model's length, count tokens."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from koaml.configfiles import ConfigError
from koaml.datafiles import read_rows, warn_unused_target_column
from koaml.formats import check_rows, to_training_row
from koaml.io import write_json, write_text_atomic
from koaml.recipe import Recipe, is_local_dataset
from koaml.sections import DataSettings, default

log = logging.getLogger(__name__)


def _ids(tokenizer, value, add_generation_prompt: bool = False, template_options: dict | None = None) -> list[int]:
    """Token IDs of a text, or of chat messages rendered by the tokenizer's chat template (with its options,
    such as ``enable_thinking``)."""
    if isinstance(value, list):
        return tokenizer.apply_chat_template(
            value,
            tokenize=True,
            add_generation_prompt=add_generation_prompt,
            return_dict=False,
            **(template_options or {}),
        )
    return tokenizer(value)["input_ids"]


def _token_count(row: dict, tokenizer) -> int:
    options = row.get("chat_template_kwargs")
    if "chosen" in row:  # a preference row: its longer answer
        return max(
            len(_ids(tokenizer, row["prompt"] + row[k], template_options=options)) for k in ("chosen", "rejected")
        )
    if "text" in row:
        return len(_ids(tokenizer, row["text"]))
    if "completion" in row:
        return len(_ids(tokenizer, row["prompt"] + row["completion"], template_options=options))
    # a GRPO prompt: completions come later
    return len(_ids(tokenizer, row["prompt"], add_generation_prompt=True, template_options=options))


def prompt_budget(recipe: Recipe) -> int | None:
    """The most prompt tokens a row may have: a generating trainer (GRPO) leaves room for a whole completion
    (``max_completion_length``); with the loss on completions only, one completion token must remain."""
    max_len, training = recipe.model.model_max_length, recipe.training
    if recipe.trainer.generates:
        return max_len - training.max_completion_length
    return max_len - 1 if training.completion_only_loss else None


def _fitting(rows: list[dict], tokenizer, budget: int | None) -> list[dict]:
    """The rows whose prompt has at most ``budget`` tokens (all rows when there is no budget)."""
    if budget is None:
        return rows
    return [
        r
        for r in rows
        if "prompt" not in r or len(_ids(tokenizer, r["prompt"], True, r.get("chat_template_kwargs"))) <= budget
    ]


def prepare(recipe: Recipe, tokenizer_path: str, out_dir: str | Path) -> dict:
    """Write ``train.jsonl``, ``eval.jsonl`` and ``stats.json`` for a recipe's data section; return the stats."""
    from transformers import AutoTokenizer

    data = recipe.data
    name = data.train_dataset.dataset_name
    where = f"{name}: data.train_dataset"
    fmt, rows = check_rows(read_rows(data.train_dataset), recipe, where, editable=is_local_dataset(name))
    formats = [fmt]
    train = [to_training_row(r, fmt, data.template, data.target_column) for r in rows]
    if data.max_samples:
        train = train[: data.max_samples]
    dropped = len(rows) - len(train)

    if data.eval_dataset:
        eval_name = data.eval_dataset.dataset_name
        eval_fmt, eval_rows = check_rows(
            read_rows(data.eval_dataset, "data.eval_dataset"),
            recipe,
            f"{eval_name}: data.eval_dataset",
            editable=is_local_dataset(eval_name),
        )
        formats.append(eval_fmt)
        evals = [to_training_row(r, eval_fmt, data.template, data.target_column) for r in eval_rows]
    elif data.eval_fraction > 0:
        shuffled = train[:]
        random.Random(recipe.training.seed).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * data.eval_fraction))
        evals, train = shuffled[:n_eval], shuffled[n_eval:]
        if not train:
            raise ConfigError(
                f"{name}: no training rows left after holding out {n_eval} for evaluation (data.eval_fraction); add rows or lower it"
            )
    else:
        evals = []
    if data.template == "model" and data.enable_thinking is not None:  # TRL passes a row's chat_template_kwargs on
        options = {"enable_thinking": data.enable_thinking}
        train = [dict(row, chat_template_kwargs=options) for row in train]
        evals = [dict(row, chat_template_kwargs=options) for row in evals]
    if data.target_column != default(DataSettings, "target_column"):
        warn_unused_target_column(formats, name)  # the resolved recipe cannot tell a default value from a given one

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    max_len = recipe.model.model_max_length
    budget = prompt_budget(recipe)
    kept = _fitting(train, tokenizer, budget)
    if not kept:
        if recipe.trainer.generates:
            room = (
                f"longer than {budget} tokens, model.model_max_length ({max_len}) minus training.max_completion_length "
                f"({recipe.training.max_completion_length}), which leaves no room for a completion"
            )
        else:
            room = (
                f"model.model_max_length ({max_len} tokens) or longer, which leaves no completion token to learn from"
            )
        raise ConfigError(
            f"{name}: every row was truncated away: the prompts of all {len(train)} training rows are {room} "
            f"({len(train)} rows dropped); raise model.model_max_length or shorten the prompts"
        )
    kept_evals = _fitting(evals, tokenizer, budget)
    too_long = len(train) - len(kept) + len(evals) - len(kept_evals)
    if too_long:
        log.warning("%s: %d rows dropped: their prompts are longer than %d tokens", name, too_long, budget)
    train, evals = kept, kept_evals
    lengths = [_token_count(r, tokenizer) for r in train]
    stats = {
        "format": fmt,
        "template": data.template,
        "rows": len(train),
        "eval_rows": len(evals),
        "dropped_rows": dropped,
        "too_long_rows": too_long,
        "tokens": sum(min(n, max_len) for n in lengths),
        "truncated_rows": sum(n > max_len for n in lengths),
        "max_tokens": max(lengths),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, split in (("train.jsonl", train), ("eval.jsonl", evals)):
        with open(out_dir / file_name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in split)
    write_json(out_dir / "stats.json", stats)
    write_text_atomic(out_dir / "lengths.json", json.dumps(lengths))  # tokens per training row (koaml.packing)
    return stats
