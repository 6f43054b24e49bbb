"""Reading local and hub data files, and the checks of local ones run when the workflow is parsed."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from koaml.configfiles import ConfigError, warn
from koaml.formats import check_rows, to_training_row
from koaml.recipe import LOCAL_SUFFIXES, Recipe, is_local_dataset
from koaml.rewards import required_columns
from koaml.sections import DatasetSpec

# Local data files up to PARSE_CHECK_BYTES are checked whole when the workflow is parsed (every row of JSONL,
# UTF-8 of CSV); of larger ones the first PEEK_ROWS rows (1 MB of CSV), the rest by the prepare_data job,
# a CPU job that runs before any GPU is requested.
PARSE_CHECK_BYTES = 16 * 2**20


PEEK_ROWS = 1000


FILE_TYPES = ", ".join(LOCAL_SUFFIXES)


PARQUET_MAGIC = b"PAR1"


def _local_file(spec: DatasetSpec, key: str) -> Path:
    """The local data file of a dataset spec, after checks that its type and content can be read."""
    path = Path(spec.dataset_name)
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


def read_rows(spec: DatasetSpec, key: str = "data.train_dataset") -> list[dict]:
    """Rows of the dataset spec at recipe key ``key`` (``dataset_name``, ``split``, ``subset``), each with its ``_source``."""
    name = spec.dataset_name
    if is_local_dataset(name):
        return _nonempty(_local_rows(_local_file(spec, key)), name, key)
    import datasets

    table = datasets.load_dataset(name, spec.subset, split=spec.split)
    return _nonempty([dict(row, _source=f"{name}[{spec.split}] row {i}") for i, row in enumerate(table)], name, key)


def _local_rows(path: Path, limit: int | None = None) -> list[dict]:
    """The rows of a local data file (its first ``limit``), each with its ``_source``: ``file:line`` for JSON lines,
    ``file:row N`` for JSON arrays, CSV (N counts the rows under the header) and Parquet."""
    try:
        if _is_jsonl(path):
            return _parse_jsonl(path, limit)
        rows = _read_table(path, limit)
    except UnicodeDecodeError:
        check_utf8(path)  # raises, naming the line
        raise
    return [dict(row, _source=f"{path}:row {i + 1}") for i, row in enumerate(rows[:limit])]


def _read_table(path: Path, limit: int | None) -> list[dict]:
    """The rows of a Parquet, CSV or JSON-array file, as datasets reads them (Python values, None for nulls)."""
    if path.suffix == ".json":
        return _read_json_array(path)
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        try:
            parquet = pyarrow.parquet.ParquetFile(path)
            table = next(parquet.iter_batches(batch_size=limit), None) if limit else parquet.read()
        except (pyarrow.ArrowException, OSError) as exc:
            raise ConfigError(f"{path}: not readable as Parquet ({exc}); is the file complete?") from None
        return table.to_pylist() if table is not None else []
    import pandas

    try:
        frame = pandas.read_csv(path, nrows=limit)
    except pandas.errors.EmptyDataError:
        return []
    except pandas.errors.ParserError as exc:
        raise ConfigError(f"{path}: not readable as CSV ({str(exc).strip()})") from None
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _read_json_array(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ConfigError(f"{path}: expected a JSON array of objects (or one JSON object per line)")
    return rows


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


def check_local_data(recipe: Recipe, source: str) -> list[str | None]:
    """Cheap checks of a recipe's local datasets, run when the workflow is parsed: the file exists, has a known
    type and matching content, is UTF-8 text; its rows (all of them up to PARSE_CHECK_BYTES, else the first
    PEEK_ROWS; JSON arrays only up to that size) parse, share a known format, fit the template and the trainer,
    have something to learn from, and hold what GRPO's ``rewards`` read.
    Returns the format of each dataset, None for those not read here (hub datasets, large JSON arrays)."""
    data, formats = recipe.data, []
    for key, spec in recipe.datasets.items():
        where = f"{source}: data.{key}"
        if not is_local_dataset(spec.dataset_name):
            formats.append(None)
            continue
        path = _local_file(spec, where)
        _warn_hub_only_keys(spec, where)
        small = path.stat().st_size <= PARSE_CHECK_BYTES
        if path.suffix == ".json" and not small and not _is_jsonl(path):
            formats.append(None)
            continue
        columns = str(required_columns(recipe.rewards))
        checked = (
            path.resolve(),
            path.stat().st_mtime_ns,
            data.target_column,
            data.template,
            recipe.trainer_type,
            columns,
        )
        if checked not in _CHECKED:
            rows = _nonempty(_local_rows(path, limit=None if small else PEEK_ROWS), spec.dataset_name, where)
            fmt, _ = check_rows(rows, recipe, where, whole=small)
            for row in rows:
                to_training_row(row, fmt, data.template, data.target_column)
            _CHECKED[checked] = fmt
        formats.append(_CHECKED[checked])
    return formats


def _warn_hub_only_keys(spec: DatasetSpec, key: str) -> None:
    """A local file is one split of one configuration: warn that ``split`` (other than train) and ``subset``
    are not used."""
    if spec.split != "train":
        warn(
            f"{key}.split: '{spec.split}' ignored; a local file is one split, all of whose rows are read (hold rows "
            "out with data.eval_fraction or data.eval_dataset, use fewer with data.max_samples)"
        )
    if spec.subset is not None:
        warn(f"{key}.subset: '{spec.subset}' ignored; a local file has no subsets (configurations)")


# The format of each dataset that passed check_local_data, by (file, mtime, column, template, trainer, reward columns).
_CHECKED: dict[tuple, str] = {}


def warn_unused_target_column(formats: list[str | None], source: str) -> None:
    """Warn that ``data.target_column`` is ignored when every dataset's format is known (not None) and none is plain text."""
    if None not in formats and "text" not in formats:
        warn(
            f"{source}: data.target_column: ignored; the data is in {' and '.join(sorted(set(formats)))} format, "
            "which has its own columns (target_column only names the column of plain-text rows)"
        )
