"""GRPO rewards: built-in verifiable rewards and users' own ``path/to/file.py:function``.

A recipe's ``training.rewards`` is a list of ``{function, weight, ...}``; :func:`problems` checks it when the
workflow is parsed (parameters, patterns, and a user function's file and signature, read with ``ast`` without
running it); :func:`reward_functions` builds what ``trl.GRPOTrainer`` calls in the training job.

TRL calls every reward function with keywords: ``prompts``, ``completions`` (strings, or for chat prompts a
list of messages each), ``completion_ids``, ``trainer_state`` and every data column; it returns one float (or
None) per completion. Cheap to import (no torch).
"""

from __future__ import annotations

import ast
import asyncio
import difflib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_COLUMN = "answer"
# The parameters each built-in reward takes, and those it needs.
BUILTIN_PARAMETERS = {
    "exact_match": ("column", "pattern"),
    "numeric_match": ("column", "pattern", "tolerance"),
    "regex": ("pattern",),
    "length_penalty": ("max_tokens",),
}
REQUIRED_PARAMETERS = {"regex": ("pattern",), "length_penalty": ("max_tokens",)}
PARAMETERS = ("column", "pattern", "tolerance", "max_tokens")
# The keywords TRL passes to every reward function besides the data columns.
TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state")
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def is_builtin(spec: dict) -> bool:
    return spec["function"] in BUILTIN_PARAMETERS


def split_reference(function: str) -> tuple[Path, str]:
    """``path/to/file.py:function`` -> (path, function name)."""
    path, _, name = function.rpartition(":")
    return Path(path), name


def user_files(rewards: list[dict]) -> list[str]:
    """The Python files of the user's own reward functions and the modules next to them they import (editing one
    reruns the training)."""
    files = {split_reference(r["function"])[0] for r in rewards if not is_builtin(r)}
    return sorted({str(f) for f in files} | {str(helper) for f in files for helper in _helper_modules(f)})


def _helper_modules(path: Path) -> set[Path]:
    """The modules next to reward file ``path`` that it imports by name."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return set()
    return {(path.parent / f"{module.split('.')[0]}.py") for _, module in _imports(tree.body) if module} & set(
        path.parent.glob("*.py")
    )


def problems(rewards: list[dict], key: str = "training.rewards") -> list[str]:
    """What is wrong with a recipe's rewards, each naming its key."""
    found = []
    if rewards and all(spec.get("weight", 1.0) == 0 for spec in rewards):
        found.append(
            f"{key}: every reward has weight 0: the summed reward is 0 for every completion, so GRPO's advantages "
            "and loss are 0 and nothing is learned; give a reward a non-zero weight"
        )
    for i, spec in enumerate(rewards):
        at = f"{key}[{i}]"
        if is_builtin(spec):
            found += _builtin_problems(spec, at)
        else:
            found += _user_problems(spec, at)
    return found


def _builtin_problems(spec: dict, at: str) -> list[str]:
    name = spec["function"]
    takes = BUILTIN_PARAMETERS[name]
    found = [
        f"{at}.{p}: not a parameter of {name} (it takes: {', '.join(takes)})"
        for p in PARAMETERS
        if p in spec and p not in takes
    ]
    found += [f"{at}: {name} needs '{p}'" for p in REQUIRED_PARAMETERS.get(name, ()) if p not in spec]
    if "pattern" in spec:
        try:
            groups = re.compile(spec["pattern"]).groups
        except re.error as exc:
            return [*found, f"{at}.pattern: not a regular expression ({exc})"]
        if name != "regex" and groups < 1:
            found.append(f"{at}.pattern: needs a group, (...), around the answer it extracts for {name}")
    return found


def _user_problems(spec: dict, at: str) -> list[str]:
    function = spec["function"]
    if ":" not in function:
        hint = difflib.get_close_matches(function, BUILTIN_PARAMETERS, n=1)
        return [
            f"{at}.function: '{function}' is not a built-in reward; "
            + (f"did you mean '{hint[0]}'?" if hint else "")
            + f" expected one of {', '.join(BUILTIN_PARAMETERS)}, or your own as path/to/file.py:function"
        ]
    extra = [p for p in PARAMETERS if p in spec]
    if extra:
        return [f"{at}.{extra[0]}: only built-in rewards take parameters; read data columns in your function instead"]
    path, name = split_reference(function)
    if path.suffix != ".py" or not name.isidentifier():
        return [f"{at}.function: '{function}': expected path/to/file.py:function"]
    if not path.is_file():
        return [f"{at}.function: {path}: file not found (paths are relative to the workflow folder)"]
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, SyntaxError) else str(path)
        return [f"{at}.function: {where}: cannot be read as Python ({exc})"]
    node = _function(tree, name)
    if node is None:
        assigned = next((line for line, bound in _assignments(tree) if bound == name), None)
        if assigned is not None:
            return [
                f"{at}.function: {path}:{assigned}: '{name}' is assigned, not defined with def or as a lambda, so its "
                f"parameters cannot be checked before training; define it with def {name}(completions, **kwargs)"
            ]
        defined = [n.name for n in tree.body if isinstance(n, _FUNCTIONS)]
        defined += [bound for _, bound in _assignments(tree, lambdas=True)]
        hint = difflib.get_close_matches(name, defined, n=1)
        return [
            f"{at}.function: {path} defines no top-level function '{name}'"
            + (f"; did you mean '{hint[0]}'?" if hint else f" (it defines: {', '.join(defined) or 'none'})")
        ]
    return [f"{at}.function: {path}:{node.lineno}: {name}{why}" for why in _signature_problems(node.args)] + [
        f"{at}.function: {path}:{line}: {why}" for line, why in _import_problems(tree.body, path)
    ]


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)  # async rewards are awaited (load_user_function)


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | None:
    """The top-level ``def name`` of a module, or the lambda assigned to ``name`` (``name = lambda ...``): a
    reward either way, whose ``args`` and ``lineno`` are checked."""
    found = next((n for n in tree.body if isinstance(n, _FUNCTIONS) and n.name == name), None)
    if found is None:
        found = next((value for value, bound in _assignments(tree, lambdas=True, values=True) if bound == name), None)
    return found


def _assignments(tree: ast.Module, lambdas: bool = False, values: bool = False) -> list[tuple]:
    """``(line, name)`` of each name assigned at the top level of a module (``values``: ``(value, name)``), only
    those assigned a lambda or (``lambdas`` false) only the others."""
    found = []
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        value = getattr(node, "value", None)
        if value is None or isinstance(value, ast.Lambda) != lambdas:
            continue
        found += [(value if values else node.lineno, t.id) for t in targets if isinstance(t, ast.Name)]
    return found


def _imports(body: list[ast.stmt]) -> list[tuple[int, str | None]]:
    """(line, module) of the imports that run whenever the file is loaded or a function called: at the top level
    and in function and class bodies; not under ``if``, ``try`` or ``with`` (conditional or optional). A relative
    import's module is None."""
    found = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, None if node.level else node.module))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found += _imports(node.body)
    return found


def _import_problems(body: list[ast.stmt], path: Path) -> list[tuple[int, str]]:
    """Imports that would fail in the training job: relative ones, modules neither installed nor next to the
    reward file, and names a neighbour module does not define (``from helpers import normalize``)."""
    found = [
        (line, _not_installed(module, path) if module else "a relative import; the file is loaded on its own: "
         "import its neighbours by name")
        for line, module in _imports(body)
        if module is None or not _importable(module, path)
    ]  # fmt: skip
    return found + _missing_names(body, path)


def _missing_names(body: list[ast.stmt], path: Path) -> list[tuple[int, str]]:
    """``from <neighbour> import name`` where the neighbour module (a .py file next to ``path``) binds no
    ``name`` at its top level (a def, class, assignment or import; one with ``*`` imports or ``__getattr__``
    is not checked)."""
    found = []
    for node in _import_froms(body):
        neighbour = path.parent / f"{node.module}.py"
        if node.level or not node.module or "." in node.module or not neighbour.is_file():
            continue
        try:
            tree = ast.parse(neighbour.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # reported when it is imported
        bound = _top_level_names(tree)
        if bound is None:
            continue
        for alias in node.names:
            if alias.name != "*" and alias.name not in bound:
                hint = difflib.get_close_matches(alias.name, sorted(bound), n=1)
                found.append(
                    (
                        node.lineno,
                        f"imports '{alias.name}' from {neighbour.name}, which does not define it"
                        + (
                            f"; did you mean '{hint[0]}'?"
                            if hint
                            else f" (it defines: {', '.join(sorted(bound)) or 'nothing'})"
                        ),
                    )
                )
    return found


def _import_froms(body: list[ast.stmt]) -> list[ast.ImportFrom]:
    """The ``from ... import`` statements :func:`_imports` reads (top level, function and class bodies)."""
    found = []
    for node in body:
        if isinstance(node, ast.ImportFrom):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found += _import_froms(node.body)
    return found


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at its top level (under if/try/with too); None when it cannot be known (a ``*``
    import, a module ``__getattr__``)."""
    names: set[str] = set()
    blocks = [tree.body]
    while blocks:
        for node in blocks.pop():
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                if any(alias.name == "*" for alias in node.names):
                    return None
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif nested := [
                b for f in ("body", "orelse", "finalbody") if isinstance(b := getattr(node, f, None), list)
            ]:
                handlers = getattr(node, "handlers", [])
                blocks += nested + [h.body for h in handlers]  # if, for, while, with, try
                heads = [getattr(node, "target", None), *(i.optional_vars for i in getattr(node, "items", []))]
                names.update(n.id for h in heads if h is not None for n in ast.walk(h) if isinstance(n, ast.Name))
                names.update(h.name for h in handlers if h.name)
            else:
                names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return None if "__getattr__" in names else names


def _importable(module: str, path: Path) -> bool:
    """Whether ``module``'s top-level package is installed or sits next to ``path`` (load_user_function puts the
    file's folder on the path)."""
    top = module.split(".")[0]
    beside = (path.parent / f"{top}.py").is_file() or (path.parent / top / "__init__.py").is_file()
    return beside or importlib.util.find_spec(top) is not None


def _not_installed(module: str, path: Path) -> str:
    top = module.split(".")[0]
    return (
        f"imports '{module}', which is not installed in this environment, where the training job runs; "
        f"pip install it, or put {top}.py next to {path.name}"
    )


def _signature_problems(args: ast.arguments) -> list[str]:
    """A reward function must take TRL's keywords: ``**kwargs`` and no positional-only parameters."""
    found = []
    if args.posonlyargs:
        found.append("(...): TRL passes everything by keyword; remove the '/' (positional-only parameters)")
    if args.kwarg is None:
        found.append(
            "(...) must accept **kwargs: TRL passes prompts, completions, completion_ids, trainer_state and every "
            "data column as keywords"
        )
    return found


def required_columns(rewards: list[dict]) -> dict[str, str]:
    """The data columns the rewards read, each with the reward that needs it (built-ins' ``column``; a user
    function's parameters without a default that are not TRL's keywords)."""
    columns = {}
    for i, spec in enumerate(rewards):
        if spec["function"] in ("exact_match", "numeric_match"):
            columns.setdefault(spec.get("column", DEFAULT_COLUMN), f"training.rewards[{i}] ({spec['function']})")
        elif not is_builtin(spec):
            for name in _user_parameters(spec["function"]):
                columns.setdefault(name, f"training.rewards[{i}] ({spec['function']})")
    return columns


def numeric_columns(rewards: list[dict]) -> set[str]:
    """The columns numeric_match reads (each value must be a number)."""
    return {r.get("column", DEFAULT_COLUMN) for r in rewards if r["function"] == "numeric_match"}


def _user_parameters(function: str) -> list[str]:
    path, name = split_reference(function)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    node = _function(tree, name)
    if node is None:
        return []
    a = node.args
    positional = a.args[: len(a.args) - len(a.defaults)]
    keyword_only = [arg for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True) if default is None]
    return [arg.arg for arg in (*positional, *keyword_only) if arg.arg not in TRL_KEYWORDS]


def as_text(completion) -> str:
    """A completion's text: the string itself, or the content of a chat completion's messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def extract(text: str, pattern: str | None) -> str | None:
    """The answer in ``text``: the first group of ``pattern``'s last match, or the whole text stripped."""
    if pattern is None:
        return text.strip()
    matches = list(re.finditer(pattern, text, re.DOTALL))
    return matches[-1].group(1).strip() if matches else None


def to_number(text: str | None) -> float | None:
    """The last number in ``text`` (thousands separators allowed), or None."""
    if text is None:
        return None
    numbers = NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))
    return float(numbers[-1]) if numbers else None


def reference_number(value) -> float | None:
    """A reference answer as a number (``1,234`` and ``-0.5`` included), or None if it is not one."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", str(value).strip())
    return float(text) if NUMBER.fullmatch(text) else None


def exact_match(completions, column: str = DEFAULT_COLUMN, pattern: str | None = None, **kwargs) -> list[float]:
    """1.0 where the extracted answer equals the reference (both stripped), else 0.0."""
    return [
        float(extract(as_text(c), pattern) == str(ref).strip())
        for c, ref in zip(completions, kwargs[column], strict=True)
    ]


def numeric_match(
    completions, column: str = DEFAULT_COLUMN, pattern: str | None = None, tolerance: float = 0.0, **kwargs
) -> list[float]:
    """1.0 where the completion's last number (or ``pattern``'s group) is within ``tolerance`` of the reference."""
    scores = []
    for c, ref in zip(completions, kwargs[column], strict=True):
        value = to_number(extract(as_text(c), pattern))
        scores.append(
            float(value is not None and math.isclose(value, reference_number(ref), rel_tol=0, abs_tol=tolerance))
        )
    return scores


def regex(completions, pattern: str, **kwargs) -> list[float]:
    """1.0 where the completion contains ``pattern`` (``.`` matches newlines), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.search(as_text(c)) is not None) for c in completions]


def length_penalty(completion_ids, max_tokens: int, **kwargs) -> list[float]:
    """0 up to ``max_tokens`` tokens, then down linearly to -1 at twice as many (and below)."""
    return [-min(1.0, max(0, len(ids) - max_tokens) / max_tokens) for ids in completion_ids]


_BUILTINS = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "regex": regex,
    "length_penalty": length_penalty,
}


def reward_functions(rewards: list[dict]) -> list[Callable]:
    """The functions ``trl.GRPOTrainer`` calls, named for its logs (``rewards/<name>/mean``)."""
    functions, names = [], []
    for spec in rewards:
        if is_builtin(spec):
            params = {p: spec[p] for p in BUILTIN_PARAMETERS[spec["function"]] if p in spec}
            function = _bind(_BUILTINS[spec["function"]], params)
        else:
            function = load_user_function(spec["function"])
        name = function.__name__
        names.append(f"{name}_{names.count(name) + 1}" if name in names else name)
        function.__name__ = names[-1]
        functions.append(function)
    return functions


def _bind(builtin: Callable, params: dict) -> Callable:
    def reward(**kwargs):
        return builtin(**kwargs, **params)

    reward.__name__ = builtin.__name__
    return reward


def load_user_function(function: str) -> Callable:
    """Import ``path/to/file.py:function`` and check its signature (as the dry run did, now on the real object)."""
    path, name = split_reference(function)
    if str(path.parent.resolve()) not in sys.path:
        sys.path.append(str(path.parent.resolve()))  # the file's own helper modules import by name
    spec = importlib.util.spec_from_file_location(f"koaml_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = getattr(module, name, None)
    if not callable(found):
        raise ValueError(f"{function}: {path} defines no function '{name}'")
    parameters = inspect.signature(found).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise ValueError(f"{function}: must accept **kwargs (TRL passes its keywords and every data column)")

    loop = asyncio.new_event_loop() if inspect.iscoroutinefunction(found) else None  # one loop for every call

    def reward(**kwargs):
        scores = found(**kwargs)
        return loop.run_until_complete(scores) if loop else scores

    reward.__name__ = name
    return reward
