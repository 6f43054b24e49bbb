"""Row formats and prompt templates: what a data row holds, and the text or messages a trainer reads from it.

Rows come in one of six formats, detected from their keys: ``messages`` (chat),
``prompt``/``completion`` pairs, Alpaca's ``instruction``/``input``/``output``, plain text in
``data.target_column`` (these train SFT), ``prompt``/``chosen``/``rejected`` preference rows (DPO), or
``prompt`` alone with the columns the rewards read (GRPO). Which trainer reads which is the trainer registry's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from koaml.configfiles import ConfigError, warn
from koaml.rewards import as_text, numeric_columns, reference_number, required_columns
from koaml.trainers import PREFERENCE_KEYS, TRAINERS

if TYPE_CHECKING:
    from koaml.recipe import Recipe

# Prompt formats for template names other than 'none' and 'model' (the tokenizer's own chat template).
# Each maps a list of chat messages to (prompt, completion_suffix): the prompt ends where the reply starts.
TEMPLATES = {
    "llama3": {
        "turn": "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        "begin": "<|begin_of_text|>",
        "reply": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "end": "<|eot_id|>",
    },
    "chatml": {
        "turn": "<|im_start|>{role}\n{content}<|im_end|>\n",
        "begin": "",
        "reply": "<|im_start|>assistant\n",
        "end": "<|im_end|>",
    },
    "alpaca": {
        "turn": "### {title}:\n{content}\n\n",
        "begin": "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
        "reply": "### Response:\n",
        "end": "",
    },
}


_ALPACA_TITLES = {"system": "Context", "user": "Instruction", "assistant": "Response"}


_PREFERENCE = "/".join(f"'{key}'" for key in PREFERENCE_KEYS)


def detect_format(rows: list[dict], target_column: str) -> str:
    """'preference', 'messages', 'prompt_completion', 'alpaca', 'prompt' or 'text', from the first row; every
    row must agree and hold text (``messages``: a list of ``{role, content}`` objects; preference and prompt
    rows: text, or chat messages with a template)."""
    first = rows[0]
    if all(key in first for key in PREFERENCE_KEYS):
        fmt, keys = "preference", PREFERENCE_KEYS
    elif "messages" in first:
        fmt, keys = "messages", ("messages",)
    elif "prompt" in first and "completion" in first:
        fmt, keys = "prompt_completion", ("prompt", "completion")
    elif "instruction" in first and "output" in first:
        fmt, keys = "alpaca", ("instruction", "output")
    elif "prompt" in first:
        fmt, keys = "prompt", ("prompt",)
    elif target_column in first:
        fmt, keys = "text", (target_column,)
    else:
        found = ", ".join(k for k in first if k != "_source")
        if "chosen" in first or "rejected" in first:
            raise ConfigError(f"{first['_source']}: preference rows (DPO) need {_PREFERENCE}; found: {found}")
        raise ConfigError(
            f"{first['_source']}: no 'messages', 'prompt'/'completion', 'instruction'/'output' or '{target_column}' column "
            f"(data.target_column) for SFT, {_PREFERENCE} for DPO, or 'prompt' for GRPO; found: {found}"
        )
    for row in rows:
        for key in keys:
            _check_value(row, key, fmt)
    return fmt


def _check_value(row: dict, key: str, fmt: str) -> None:
    """Raise ConfigError when ``row`` lacks ``key`` or its value is not what rows of ``fmt`` hold there."""
    if key not in row:
        raise ConfigError(f"{row['_source']}: missing '{key}' (the first row is in {fmt} format)")
    value = row[key]
    if _is_null(value):
        raise ConfigError(
            f"{row['_source']}: '{key}' is {'NaN' if value is not None else 'null'} (an empty cell?): the row has no "
            f"{key}; fill or remove it"
        )
    if key == "messages" or (fmt in ("preference", "prompt") and isinstance(value, list)):
        _check_roles(value, row["_source"], key)
    if key == "messages":
        ok, expected = _is_chat(value), "a list of {role, content} objects"
    elif fmt in ("preference", "prompt"):
        ok, expected = _is_text(value) or _is_chat(value), "a string, or a list of {role, content} objects"
    else:
        ok, expected = _is_text(value), "a string (or a number)"
    if not ok:
        raise ConfigError(
            f"{row['_source']}: '{key}' must be {expected}, got {type(value).__name__}: {str(value)[:40]}"
        )


def _is_null(value) -> bool:
    """None, or NaN (how pandas and JSON write an empty cell), which would otherwise be trained as the text 'nan'."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# The chat roles of the Hugging Face message format (chat templates and TRL read these).
ROLES = ("system", "user", "assistant", "tool")


def _check_roles(messages, source: str, key: str) -> None:
    """Chat messages use the roles chat templates know: ShareGPT's ``human``/``gpt`` or ``bot`` are not."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if isinstance(role, str) and role not in ROLES:
            raise ConfigError(
                f"{source}: {key}[{i}].role: '{role}' is not a chat role; expected one of: {', '.join(ROLES)} "
                "(rename e.g. human -> user, bot or gpt -> assistant)"
            )


def _is_text(value) -> bool:
    """A string, or a number (converted to a string)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _is_chat(messages) -> bool:
    return isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    )


def _render(messages: list[dict], template: str) -> str:
    t = TEMPLATES[template]
    turns = []
    for m in messages:
        title = _ALPACA_TITLES.get(m["role"], m["role"].title())
        turns.append(t["turn"].format(role=m["role"], content=m["content"], title=title))
    return t["begin"] + "".join(turns)


# What to tell a user whose rows are in a format SFT does not read.
_FORMAT_HINTS = {
    "preference": f"the data holds preference rows ({', '.join(PREFERENCE_KEYS)}): set training.trainer_type: dpo",
    "prompt": "the rows have a 'prompt' but no 'completion': add completions for SFT, or set training.trainer_type: "
    "grpo (which generates its own, scored by training.rewards)",
}


def check_format_fits_trainer(fmt: str, trainer_type: str, source: str) -> None:
    """The rows are in a format the trainer reads (the registry's ``formats``)."""
    trainer = TRAINERS[trainer_type]
    if fmt in trainer.formats:
        return
    if trainer.needs is None:
        raise ConfigError(f"{source}: {_FORMAT_HINTS[fmt]}")
    rename = (
        " (to score against the 'completion' column, rename it to 'answer')"
        if trainer.generates and "completion" in fmt
        else ""
    )
    raise ConfigError(
        f"{source}: training.trainer_type {trainer.name} needs {trainer.needs}{rename}; the data is in {fmt} format"
    )


def check_rows(rows: list[dict], recipe: Recipe, where: str, *, whole: bool = True, editable: bool = True):
    """The format of a dataset's rows (``where`` names it) and the rows to train on, after the checks the dry run and
    prepare_data share: every row in that format, a format the trainer reads, the columns the rewards read,
    something to learn (:func:`learnable_rows`; ``whole``: these are all the rows, ``editable``: a local file)."""
    fmt = detect_format(rows, recipe.data.target_column)
    check_format_fits_trainer(fmt, recipe.trainer_type, where)
    check_reward_columns(rows, recipe.rewards)
    return fmt, learnable_rows(rows, fmt, recipe.data.target_column, where, whole=whole, editable=editable)


def learnable_rows(rows: list[dict], fmt: str, target_column: str, where: str, *, whole: bool, editable: bool):
    """The rows with something to learn from. A row whose target (completion, output, reply, text, chosen or
    rejected) is empty is an error naming it in a file the user can fix (``editable``), else (a hub dataset) it is
    dropped with a warning. DPO pairs whose chosen equals rejected have no margin: an error when all the rows
    (``whole``) are such, a warning with their count when some are."""
    targets = {
        "prompt_completion": ("completion",),
        "alpaca": ("output",),
        "text": (target_column,),
        "preference": ("chosen", "rejected"),
        "messages": ("messages",),
        "prompt": ("prompt",),  # GRPO learns from what it generates for the prompt
    }.get(fmt, ())
    kept, empty = [], []
    for row in rows:
        key = next((k for k in targets if not _as_text(row[k][-1:] if k == "messages" else row[k]).strip()), None)
        if key is None:
            kept.append(row)
            continue
        what = "the last message's content" if key == "messages" else f"'{key}'"
        if editable:
            raise ConfigError(
                f"{row['_source']}: {what} is empty: the row has nothing to learn from; fill or remove it"
            )
        empty.append(row["_source"])
    if empty:
        if not kept:
            raise ConfigError(f"{where}: every row's target is empty ({len(rows)} rows): nothing to learn from")
        warn(f"{where}: {len(empty)} rows with an empty target dropped (the first: {empty[0]})")
    if fmt == "preference":
        same = [row["_source"] for row in kept if _as_text(row["chosen"]) == _as_text(row["rejected"])]
        if whole and len(same) == len(kept):
            raise ConfigError(
                f"{where}: in every row 'chosen' equals 'rejected' ({len(kept)} rows); DPO learns from how they differ"
            )
        if same:
            warn(
                f"{where}: in {len(same)} of {len(kept)} rows 'chosen' equals 'rejected' (the first: {same[0]}); "
                "their loss has no margin to learn from"
            )
    return kept


def _as_text(value) -> str:
    """A target's text: a string or number as it is written, chat messages' contents joined."""
    return as_text(value if isinstance(value, list) else str(value))


def check_reward_columns(rows: list[dict], rewards: list[dict]) -> None:
    """Every row holds each column the rewards read; numeric_match's columns hold numbers."""
    columns, numeric = required_columns(rewards), numeric_columns(rewards)
    for row in rows:
        for column, reward in columns.items():
            if column not in row:
                found = ", ".join(k for k in row if k != "_source")
                raise ConfigError(f"{row['_source']}: no '{column}' column, which {reward} reads; found: {found}")
            if _is_null(row[column]):
                raise ConfigError(
                    f"{row['_source']}: '{column}' is {'NaN' if row[column] is not None else 'null'}, which {reward} "
                    "reads (an empty cell?); fill or remove the row"
                )
            if column in numeric and reference_number(row[column]) is None:
                raise ConfigError(
                    f"{row['_source']}: '{column}' must be a number for numeric_match, got {row[column]!r}"
                )


def _prompt_row(row: dict, template: str) -> dict:
    """A GRPO row: the rendered ``prompt`` (like a prompt/completion row's) and every other column as it is."""
    prompt = row["prompt"]
    extra = {k: v for k, v in row.items() if k not in ("prompt", "_source")}
    if template == "none":
        if isinstance(prompt, list):
            raise ConfigError(f"{row['_source']}: chat messages need a template (data.template: model, llama3, ...)")
        return {"prompt": str(prompt), **extra}
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    if template == "model":  # TRL's conversational prompt: the chat template renders it, with the generation prompt
        return {"prompt": messages, **extra}
    return {"prompt": _render(messages, template) + TEMPLATES[template]["reply"], **extra}


def _preference_row(row: dict, template: str) -> dict:
    """A DPO row: ``prompt``, ``chosen`` and ``rejected``, rendered like prompt/completion rows."""
    prompt, chosen, rejected = (row[k] for k in PREFERENCE_KEYS)
    chat = any(isinstance(v, list) for v in (prompt, chosen, rejected))
    if template == "none":
        if chat:
            raise ConfigError(f"{row['_source']}: chat messages need a template (data.template: model, llama3, ...)")
        return {"prompt": str(prompt), "chosen": str(chosen), "rejected": str(rejected)}

    def messages(value, role):
        return value if isinstance(value, list) else [{"role": role, "content": str(value)}]

    prompt, chosen, rejected = messages(prompt, "user"), messages(chosen, "assistant"), messages(rejected, "assistant")
    if template == "model":  # TRL's conversational preference rows: the tokenizer's chat template renders them
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    t = TEMPLATES[template]
    reply = _render(prompt, template) + t["reply"]
    return {
        "prompt": reply,
        "chosen": "".join(m["content"] for m in chosen) + t["end"],
        "rejected": "".join(m["content"] for m in rejected) + t["end"],
    }


def to_training_row(row: dict, fmt: str, template: str, target_column: str) -> dict:
    """Convert one raw row to what the trainer reads: ``text``, ``prompt``/``completion`` or
    ``prompt``/``chosen``/``rejected`` (strings, or with template ``model`` lists of chat messages)."""
    if fmt == "preference":
        return _preference_row(row, template)
    if fmt == "prompt":
        return _prompt_row(row, template)
    if fmt == "text":
        return {"text": str(row[target_column])}
    if fmt in ("prompt_completion", "alpaca"):
        if fmt == "alpaca":
            prompt = "\n\n".join(str(p) for p in (row["instruction"], row.get("input")) if p and not _is_null(p))
            completion = str(row["output"])
        else:
            prompt, completion = str(row["prompt"]), str(row["completion"])
        if template == "none":
            return {"prompt": prompt, "completion": completion}
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        messages = row["messages"]
        if template == "none":
            raise ConfigError(f"{row['_source']}: chat 'messages' need a template (data.template: model, llama3, ...)")
    if not messages or messages[-1].get("role") != "assistant":
        raise ConfigError(f"{row['_source']}: the last message must be the assistant's reply")
    if template == "model":
        # TRL's conversational prompt/completion: the tokenizer's chat template renders both, and
        # completion_only_loss masks the prompt (TRL trains on every token of ``messages`` rows).
        if len(messages) < 2:
            raise ConfigError(f"{row['_source']}: the assistant's reply needs a message before it (the prompt)")
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    t = TEMPLATES[template]
    return {"prompt": _render(messages[:-1], template) + t["reply"], "completion": messages[-1]["content"] + t["end"]}
