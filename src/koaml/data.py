"""Dataset preparation: load, check, apply the prompt template, split, and count tokens.

Rows come in one of six formats, detected from their keys: ``messages`` (chat),
``prompt``/``completion`` pairs, Alpaca's ``instruction``/``input``/``output``, plain text in
``data.target_column`` (these train SFT), ``prompt``/``chosen``/``rejected`` preference rows (DPO), or
``prompt`` alone with the columns the rewards read (GRPO).
"""

from __future__ import annotations

import codecs
import json
import logging
import random
from pathlib import Path

from koaml.configfiles import ConfigError, schema, warn
from koaml.io import write_json, write_text_atomic
from koaml.recipe import LOCAL_SUFFIXES, is_local_dataset
from koaml.rewards import numeric_columns, reference_number, required_columns

log = logging.getLogger(__name__)

# Local data files up to PARSE_CHECK_BYTES are checked whole when the workflow is parsed (every row of JSONL,
# UTF-8 of CSV); of larger ones the first PEEK_ROWS rows (1 MB of CSV), the rest by the prepare_data job,
# a CPU job that runs before any GPU is requested.
PARSE_CHECK_BYTES = 16 * 2**20
PEEK_ROWS = 1000

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


FILE_TYPES = ", ".join(LOCAL_SUFFIXES)
PARQUET_MAGIC = b"PAR1"


def _local_file(spec: dict, key: str) -> Path:
    """The local data file of a dataset spec, after checks that its type and content can be read."""
    path = Path(spec["dataset_name"])
    if path.is_dir():
        raise ConfigError(f"{key}.dataset_name: {path}: a folder; expected a data file ({FILE_TYPES})")
    if not path.is_file():
        raise ConfigError(f"{key}.dataset_name: {path}: file not found")
    if path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(
            f"{key}.dataset_name: {path}: unknown file type '{path.suffix}'; expected {FILE_TYPES} "
            "(e.g. one JSON object per line in a .jsonl file)"
        )
    _check_content(path, key)
    return path


def _check_content(path: Path, key: str) -> None:
    """The file's first bytes must match its extension: Parquet's magic number, or text for the others."""
    with open(path, "rb") as f:
        head = f.read(4096)
    is_parquet = head.startswith(PARQUET_MAGIC)
    if path.suffix == ".parquet" and not is_parquet and head:
        looks = "JSON" if head.lstrip().startswith((b"{", b"[")) else "text"
        raise ConfigError(
            f"{key}.dataset_name: {path}: not a Parquet file (its content looks like {looks}); "
            "give the file the extension of its content (.jsonl, .json, .csv)"
        )
    if path.suffix != ".parquet" and (is_parquet or b"\0" in head):
        what = "a Parquet file: rename it to .parquet" if is_parquet else "binary, not text"
        raise ConfigError(f"{key}.dataset_name: {path}: {what}")


def check_utf8(path: Path, limit: int | None = None) -> None:
    """Raise ConfigError at the line of the first byte that is not UTF-8 (in the first ``limit`` bytes)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done, lineno = 0, 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk, final=False)
            except UnicodeDecodeError as exc:
                bad = chunk[exc.start : exc.start + 1].hex()
                lineno += chunk[: exc.start].count(b"\n")
                raise ConfigError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{bad} at offset {done + exc.start}); save the file "
                    "as UTF-8 (e.g. iconv -f latin1 -t utf-8, or 'CSV UTF-8' in Excel)"
                ) from None
            lineno += chunk.count(b"\n")
            done += len(chunk)
            if limit is not None and done >= limit:
                return


def _is_jsonl(path: Path) -> bool:
    """JSON lines: ``.jsonl``, or ``.json`` that is not one JSON array."""
    if path.suffix != ".json":
        return path.suffix == ".jsonl"
    with open(path, "rb") as f:
        return not f.read(4096).lstrip().startswith(b"[")


def _nonempty(rows: list[dict], name: str, key: str) -> list[dict]:
    if not rows:
        raise ConfigError(f"{key}.dataset_name: {name}: the dataset is empty (no rows)")
    return rows


def read_rows(spec: dict, key: str = "data.train_dataset") -> list[dict]:
    """Rows of the dataset spec at recipe key ``key`` (``dataset_name``, ``split``, ``subset``), each with its ``_source``."""
    name = spec["dataset_name"]
    if is_local_dataset(name):
        path = _local_file(spec, key)
        if _is_jsonl(path):
            return _nonempty(_read_jsonl(path), name, key)
        if path.suffix != ".parquet":
            check_utf8(path)
        import datasets

        table = datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train")
        return _nonempty([dict(row, _source=f"{path}:row {i + 1}") for i, row in enumerate(table)], name, key)
    import datasets

    table = datasets.load_dataset(name, spec.get("subset"), split=spec.get("split", "train"))
    return _nonempty(
        [dict(row, _source=f"{name}[{spec.get('split', 'train')}] row {i}") for i, row in enumerate(table)], name, key
    )


def check_local_data(data: dict, source: str, trainer_type: str = "sft", rewards: list[dict] = ()) -> list[str | None]:
    """Cheap checks of a recipe's local datasets, run when the workflow is parsed: the file exists, has a known
    type and matching content, is UTF-8 text; its JSONL rows (all of them up to PARSE_CHECK_BYTES, else the
    first PEEK_ROWS) parse, share a known format, fit the template and the trainer, and hold what GRPO's
    ``rewards`` read.
    Returns the format of each dataset, None for those not read here (hub, CSV, Parquet, JSON arrays)."""
    formats = []
    for key in ("train_dataset", "eval_dataset"):
        spec = data.get(key)
        if not spec:
            continue
        path = _local_file(spec, f"{source}: data.{key}") if is_local_dataset(spec["dataset_name"]) else None
        if path is None or not _is_jsonl(path):
            if path is not None and path.suffix != ".parquet":
                check_utf8(path, limit=PARSE_CHECK_BYTES if path.suffix == ".json" else 2**20)
            formats.append(None)
            continue
        columns = str(required_columns(list(rewards)))
        checked = (
            path.resolve(),
            path.stat().st_mtime_ns,
            data["target_column"],
            data["template"],
            trainer_type,
            columns,
        )
        if checked not in _CHECKED:
            limit = None if path.stat().st_size <= PARSE_CHECK_BYTES else PEEK_ROWS
            rows = _nonempty(_read_jsonl(path, limit=limit), spec["dataset_name"], f"{source}: data.{key}")
            fmt = detect_format(rows, data["target_column"])
            for row in rows:
                to_training_row(row, fmt, data["template"], data["target_column"])
            check_format_fits_trainer(fmt, trainer_type, f"{source}: data.{key}")
            check_reward_columns(rows, list(rewards))
            _CHECKED[checked] = fmt
        formats.append(_CHECKED[checked])
    return formats


# The format of each dataset that passed check_local_data, by (file, mtime, column, template, trainer, reward columns).
_CHECKED: dict[tuple, str] = {}


def warn_unused_target_column(formats: list[str | None], source: str) -> None:
    """Warn that ``data.target_column`` is ignored when every dataset's format is known (not None) and none is plain text."""
    if None not in formats and "text" not in formats:
        warn(
            f"{source}: data.target_column: ignored; the data is in {' and '.join(sorted(set(formats)))} format, "
            "which has its own columns (target_column only names the column of plain-text rows)"
        )


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    try:
        return _parse_jsonl(path, limit)
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line
        raise


def _parse_jsonl(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and lineno > limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            row["_source"] = f"{path}:{lineno}"
            rows.append(row)
    return rows


PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


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
        raise ConfigError(
            f"{first['_source']}: no 'messages', 'prompt'/'completion', 'instruction'/'output' or '{target_column}' column "
            f"(data.target_column); found: {found}"
        )
    for row in rows:
        for key in keys:
            if key not in row or row[key] is None:
                raise ConfigError(f"{row['_source']}: missing '{key}' (the first row is in {fmt} format)")
            value = row[key]
            if key == "messages":
                ok, expected = _is_chat(value), "a list of {role, content} objects"
            elif fmt in ("preference", "prompt"):
                ok, expected = _is_text(value) or _is_chat(value), "a string, or a list of {role, content} objects"
            else:
                ok, expected = _is_text(value), "a string (or a number)"
            if not ok:
                raise ConfigError(
                    f"{row['_source']}: '{key}' must be {expected}, got {type(row[key]).__name__}: {str(row[key])[:40]}"
                )
    return fmt


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


# The row format each trainer reads, and what to tell a user whose data is in another one.
TRAINER_FORMATS = {"dpo": ("preference",), "grpo": ("prompt",)}
_FORMAT_HINTS = {
    "preference": f"the data holds preference rows ({', '.join(PREFERENCE_KEYS)}): set training.trainer_type: dpo",
    "prompt": "the rows have a 'prompt' but no 'completion': add completions for SFT, or set training.trainer_type: "
    "grpo (which generates its own, scored by training.rewards)",
}


def check_format_fits_trainer(fmt: str, trainer_type: str, source: str) -> None:
    """SFT trains on text, prompt/completion, Alpaca and chat rows; DPO on preference rows; GRPO on prompt rows."""
    wanted = TRAINER_FORMATS.get(trainer_type)
    if wanted is None and fmt in _FORMAT_HINTS:
        raise ConfigError(f"{source}: {_FORMAT_HINTS[fmt]}")
    if trainer_type == "dpo" and fmt not in wanted:
        raise ConfigError(
            f"{source}: training.trainer_type dpo needs preference rows ({', '.join(PREFERENCE_KEYS)}); "
            f"the data is in {fmt} format"
        )
    if trainer_type == "grpo" and fmt not in wanted:
        rename = " (to score against the 'completion' column, rename it to 'answer')" if "completion" in fmt else ""
        raise ConfigError(
            f"{source}: training.trainer_type grpo needs rows with a 'prompt' and the columns its rewards read, "
            f"no completions: it generates its own{rename}; the data is in {fmt} format"
        )


def check_reward_columns(rows: list[dict], rewards: list[dict]) -> None:
    """Every row holds each column the rewards read; numeric_match's columns hold numbers."""
    columns, numeric = required_columns(rewards), numeric_columns(rewards)
    for row in rows:
        for column, reward in columns.items():
            if row.get(column) is None:
                found = ", ".join(k for k in row if k != "_source")
                raise ConfigError(f"{row['_source']}: no '{column}' column, which {reward} reads; found: {found}")
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
            prompt = "\n\n".join(str(p) for p in (row["instruction"], row.get("input")) if p)
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


def prompt_budget(recipe: dict) -> int | None:
    """The most prompt tokens a row may have: GRPO leaves room for a whole completion
    (``max_completion_length``); with the loss on completions only, one completion token must remain."""
    max_len, training = recipe["model"]["model_max_length"], recipe["training"]
    if training["trainer_type"] == "grpo":
        return max_len - training["max_completion_length"]
    return max_len - 1 if training["completion_only_loss"] else None


def _fitting(rows: list[dict], tokenizer, budget: int | None) -> list[dict]:
    """The rows whose prompt has at most ``budget`` tokens (all rows when there is no budget)."""
    if budget is None:
        return rows
    return [
        r
        for r in rows
        if "prompt" not in r or len(_ids(tokenizer, r["prompt"], True, r.get("chat_template_kwargs"))) <= budget
    ]


def prepare(recipe: dict, tokenizer_path: str, out_dir: str | Path) -> dict:
    """Write ``train.jsonl``, ``eval.jsonl`` and ``stats.json`` for a recipe's data section; return the stats."""
    from transformers import AutoTokenizer

    data = recipe["data"]
    name = data["train_dataset"]["dataset_name"]
    rows = read_rows(data["train_dataset"])
    fmt = detect_format(rows, data["target_column"])
    check_format_fits_trainer(fmt, recipe["training"]["trainer_type"], f"{name}: data.train_dataset")
    rewards = recipe["training"].get("rewards") or []
    check_reward_columns(rows, rewards)
    formats = [fmt]
    train = [to_training_row(r, fmt, data["template"], data["target_column"]) for r in rows]
    if data.get("max_samples"):
        train = train[: data["max_samples"]]
    dropped = len(rows) - len(train)

    if data.get("eval_dataset"):
        eval_rows = read_rows(data["eval_dataset"], "data.eval_dataset")
        eval_fmt = detect_format(eval_rows, data["target_column"])
        check_format_fits_trainer(eval_fmt, recipe["training"]["trainer_type"], f"{name}: data.eval_dataset")
        check_reward_columns(eval_rows, rewards)
        formats.append(eval_fmt)
        evals = [to_training_row(r, eval_fmt, data["template"], data["target_column"]) for r in eval_rows]
    elif data["eval_fraction"] > 0:
        shuffled = train[:]
        random.Random(recipe["training"]["seed"]).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * data["eval_fraction"]))
        evals, train = shuffled[:n_eval], shuffled[n_eval:]
        if not train:
            raise ConfigError(
                f"{name}: no training rows left after holding out {n_eval} for evaluation (data.eval_fraction); add rows or lower it"
            )
    else:
        evals = []
    if data["template"] == "model" and "enable_thinking" in data:  # TRL passes a row's chat_template_kwargs on
        options = {"enable_thinking": data["enable_thinking"]}
        train = [dict(row, chat_template_kwargs=options) for row in train]
        evals = [dict(row, chat_template_kwargs=options) for row in evals]
    if data["target_column"] != schema("recipe")["properties"]["data"]["properties"]["target_column"]["default"]:
        warn_unused_target_column(formats, name)  # the resolved recipe cannot tell a default value from a given one

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    max_len = recipe["model"]["model_max_length"]
    budget = prompt_budget(recipe)
    kept = _fitting(train, tokenizer, budget)
    if not kept:
        if recipe["training"]["trainer_type"] == "grpo":
            room = (
                f"longer than {budget} tokens, model.model_max_length ({max_len}) minus training.max_completion_length "
                f"({recipe['training']['max_completion_length']}), which leaves no room for a completion"
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
        "template": data["template"],
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
