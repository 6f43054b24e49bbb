"""The documentation cannot drift silently: the site builds with --strict (no broken link or anchor, no page left
out of the navigation), the configuration reference is what the schemas generate, every YAML example is a valid
config file (or part of one), every `koaml`, `snakemake` and `make` command shown exists, and the README stays
short. A headless Chromium renders the home page; its screenshot is kept in test-artifacts/docs.png."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import REPO

from koaml import cli
from koaml.configfiles import empty_sections, parse_yaml, schema, validate
from koaml.recipe import load_benchmark, load_recipe

PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", REPO / "config/README.md", *(REPO / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
TOOLS = ("koaml", "snakemake", "make")


def blocks(language: str) -> list[tuple[str, str]]:
    """(page:line, text) of every fenced block of ``language`` in the pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match[1] == language:
                where = f"{page.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}"
                found.append((where, match[2]))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as `make docs` builds it, with --strict; its output is checked for warnings."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [Path(sys.executable).parent / "mkdocs", "build", "--strict", "--site-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr[-3000:]
    return out


def test_the_site_builds_strictly_with_every_page_in_the_navigation(site):
    assert (site / "index.html").is_file() and (site / "reference/recipe.html").is_file()
    home = (site / "index.html").read_text()
    assert "koa-ml" in home and 'href="getting-started/index.html"' in home
    included = (site / "getting-started/index.html").read_text()  # README.md's demo table, through a snippet
    assert "tiny-full" in included and "--8&lt;--" not in included and "--8<--" not in included


def test_the_configuration_reference_is_what_the_schemas_generate():
    sys.path.insert(0, str(REPO / "docs"))
    from make_reference import pages

    for path, text in pages().items():
        assert path.is_file() and path.read_text() == text, f"{path.name} is stale: run `make docs-reference`"
    recipe = (REPO / "docs/reference/recipe.md").read_text()
    for key in schema("recipe")["properties"]["training"]["properties"]:
        assert f"| `training.{key}` |" in recipe, key
    assert "| `training.beta` | number |" in recipe and "dpo (default `0.1`)" in recipe


def _config_kind(data) -> tuple[str, bool] | None:
    """(schema, complete) of a YAML example: a whole experiment, recipe or benchmark file, or a part of one."""
    if not isinstance(data, dict) or not data:
        return None
    keys = set(data)
    if {"experiment", "benchmarks"} <= keys:
        return "experiment", True
    if "tasks" in keys:
        return "benchmark", True
    if isinstance(data.get("data"), dict) and "train_dataset" in data["data"]:
        return "recipe", True
    for name in ("experiment", "recipe", "benchmark"):
        if keys <= set(schema(name)["properties"]):
            return name, False
    return None


def test_every_yaml_example_is_a_valid_config(tmp_path, monkeypatch):
    """A whole recipe or benchmark goes through its loader (the schema and the checks beyond it), a whole experiment
    through its schema (its files need not exist), a part of one (`runs:`, `training:`) through the schema with no
    top-level key required."""
    monkeypatch.chdir(REPO)
    checked = {"experiment": 0, "recipe": 0, "benchmark": 0}
    for where, text in blocks("yaml"):
        data = empty_sections(parse_yaml(text, where), "experiment")
        kind = _config_kind(data)
        assert kind, f"{where}: a YAML block that is no experiment, recipe or benchmark file, nor a part of one"
        name, complete = kind
        if complete and name != "experiment":
            path = tmp_path / f"{name}.yaml"
            path.write_text(text)
            (load_recipe if name == "recipe" else load_benchmark)(path)
        elif complete:
            validate(data, "experiment", where)
        else:
            validator = jsonschema.Draft202012Validator({**schema(name), "required": []})
            errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
            assert not errors, f"{where} (part of a {name} file): {errors}"
        checked[name] += 1
    assert min(checked.values()) >= 1 and sum(checked.values()) >= 12, checked


def _commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text: lines joined at a trailing backslash, comments dropped, split at
    &&, ||, | and ;, leading VAR=value assignments and `env -u NAME` left out; a placeholder (`<run name>`) is
    one word."""
    commands = []
    text = re.sub(r"<[^<>\n]*>", lambda m: m[0].replace(" ", "_"), text)
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", "|", ";"):
                commands.append(command)
                command = []
            else:
                command.append(word)
    result = []
    for words in commands:
        while words and (re.fullmatch(r"[A-Z_]+=\S*", words[0]) or words[0] == "env"):
            words = words[3:] if words[0] == "env" and words[1:2] == ["-u"] else words[1:]
            while words[:1] == ["-u"]:
                words = words[2:]
        if words and Path(words[0]).name in TOOLS:
            result.append([Path(words[0]).name, *words[1:]])
    return result


def _shown_commands() -> list[tuple[str, list[str]]]:
    """(page, command) of every koaml, snakemake or make command in a bash block or an inline code span."""
    shown = [(where, c) for where, text in blocks("bash") for c in _commands(text)]
    for page in PAGES:
        prose = FENCE.sub("", page.read_text())
        for span in re.findall(r"`([^`\n]+)`", prose):
            if re.match(rf"^(\S+=\S+ )*(\.venv/bin/)?({'|'.join(TOOLS)}) ", span):
                shown += [(str(page.relative_to(REPO)), c) for c in _commands(span)]
    return shown


def _options(words: list[str]) -> list[str]:
    """The options among ``words`` (`[--watch` of a usage line counts), without their `=value`."""
    return [w.strip("[]").split("=")[0] for w in words if w.strip("[]").startswith("-") and w.strip("[]") != "-"]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), re.MULTILINE)) - {".PHONY"}


def _rules() -> set[str]:
    files = [REPO / "Snakefile", *(REPO / "workflow/rules").glob("*.smk")]
    return {m for f in files for m in re.findall(r"^\s*(?:rule|checkpoint) (\w+):", f.read_text(), re.MULTILINE)}


def test_every_command_shown_exists():
    """koaml subcommands and their options from the CLI's parser, snakemake's options from its parser and its
    targets from the workflow's rules, make targets from the Makefile."""
    from snakemake.cli import get_argument_parser

    snakemake_options = set(get_argument_parser()._option_string_actions)
    koaml_commands = next(a for a in cli.parser()._actions if a.dest == "command").choices
    targets, rules = _make_targets(), _rules()
    shown, wrong = _shown_commands(), []
    for where, (tool, *args) in shown:
        if tool == "make":
            given = [a for a in args if not a.startswith(("-", "<")) and "=" not in a]
            wrong += [f"{where}: make {t}: no such target" for t in given if t not in targets]
        elif tool == "koaml" and args and not args[0].startswith("<"):  # (`koaml <step>`: any of them)
            sub = koaml_commands.get(args[0])
            if sub is None:
                wrong.append(f"{where}: koaml {args[0]}: no such command")
                continue
            known = set(sub._option_string_actions)
            wrong += [f"{where}: koaml {args[0]} {o}: no such option" for o in _options(args[1:]) if o not in known]
        elif tool == "snakemake":
            if args and not args[0].startswith("-") and args[0] != "..." and args[0] not in rules:
                wrong.append(f"{where}: snakemake {args[0]}: no such rule")
            wrong += [f"{where}: snakemake {o}: no such option" for o in _options(args) if o not in snakemake_options]
            forced = [b for a, b in itertools.pairwise(args) if a in ("-R", "--forcerun") and not b.startswith("-")]
            wrong += [f"{where}: snakemake --forcerun {r}: no such rule" for r in forced if r not in rules]
    assert not wrong, "\n".join(wrong)
    assert {tool for _, (tool, *_) in shown} == set(TOOLS) and len(shown) >= 40, len(shown)


def test_the_readme_is_short_and_keeps_the_two_commands_and_the_demo_table():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo " in readme and "make test " in readme
    assert "<!-- generated: demo -->" in readme and "| tiny-full | demo_arith_mc | acc |" in readme
    for link in re.findall(r"\]\(((?:docs|config)/[^)#]+)", readme):
        assert (REPO / link).is_file(), link


def test_the_home_page_renders_in_a_real_browser(site, browser, tmp_path):
    """Headless Chromium opens the built site from disk: the navigation and the page's table are there; the
    screenshot is kept in test-artifacts/docs.png."""
    from browser import CHROMIUM_FLAGS

    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    home = (site / "index.html").as_uri()
    dom = subprocess.run([*common, "--dump-dom", home], capture_output=True, text=True, timeout=120).stdout
    assert "md-nav" in dom and "Getting started" in dom and "<table>" in dom, dom[:500]
    shot = tmp_path / "docs.png"
    subprocess.run([*common, "--window-size=1280,1000", f"--screenshot={shot}", home], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (REPO / "test-artifacts").mkdir(exist_ok=True)
    shutil.copy(shot, REPO / "test-artifacts/docs.png")
