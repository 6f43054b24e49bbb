"""The documentation's tables that the code produces, regenerated from the results that produced them, between
marked lines (``<!-- generated: NAME -->`` ... ``<!-- end: NAME -->``) of the page in PAGES, so that no figure is
copied by hand; then the configuration reference (docs/make_reference.py).

- ``demo``: the demo experiment's comparison (``make demo``'s results/compare/summary.csv), in README.md (the site's
  Getting started page includes it); deterministic, and tests/test_demo.py checks that the README's table is what
  the suite's demo run produces.
- ``smollm2``: config/examples/smollm2.yaml's comparison (17 minutes on 2 cores; regenerated when its results
  folder is given), in docs/getting-started/smollm2.md.
- ``bench``: the result column of the benchmark table in docs/benchmarks.md, each script's one-line summary from its
  JSON in bench/results/ (a script not run there, or run with --smoke, keeps its row as it is).
- ``train_overhead``: bench/train_overhead.py's cases, koa-ml against the bare TRL script, in docs/benchmarks.md
  (kept as it is unless bench/results/ holds a measured run).

    make docs-figures                                   # runs the demo, then this script on its results
    .venv/bin/python docs/make_figures.py --demo results [--smollm2 <folder of the example's results>] [--bench DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Where each generated table lives.
BENCHMARKS = REPO / "docs/benchmarks.md"
PAGES = {
    "demo": README,
    "smollm2": REPO / "docs/getting-started/smollm2.md",
    "bench": BENCHMARKS,
    "train_overhead": BENCHMARKS,
}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def comparison_table(summary_csv: str | Path) -> str:
    """A sentence on what is significant, and the table of every row: scores, delta, its interval, adjusted p."""
    table = pd.read_csv(summary_csv)
    table = table[table.replicate_of.isna()] if "replicate_of" in table else table
    rows = [
        f"| {r.run} | {r.benchmark} | {r.metric} | {_pct(r.base_score)} | {_pct(r.score)} | {100 * r.delta:+.1f} | "
        f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}] | {r.p_adjusted:.2g} | {'yes' if r.significant else 'no'} |"
        for r in table.sort_values(["benchmark", "run"]).itertuples()
    ]
    significant = int(table.significant.sum())
    not_significant = [f"{r.run} on {r.benchmark}" for r in table[~table.significant.astype(bool)].itertuples()]
    underpowered = [f"{r.run} on {r.benchmark}" for r in table[table.underpowered.astype(bool)].itertuples()]
    sentence = f"{significant} of {len(table)} gains are significant after the correction"
    if not_significant:
        sentence += f"; not: {', '.join(not_significant)}"
    if underpowered:
        sentence += f" (underpowered: {', '.join(underpowered)}: more items could tell)"
    header = "| run | benchmark | metric | base | score | delta | 95% CI | p adj. | sig. |\n|---|---|---|---|---|---|---|---|---|"
    return f"{sentence}.\n\n{header}\n" + "\n".join(rows)


def train_overhead_table(result: dict) -> str:
    """bench/train_overhead.py's cases: TRL's train_runtime for koa-ml and the bare script, their ratio, the whole
    processes' ratio and the final losses."""
    header = (
        f"Medians of {result['repeats']} alternating rounds, {result['threads']} threads:\n\n"
        "| case | koa-ml train_runtime | bare TRL | ratio | whole process | final loss (koa-ml / bare) |\n"
        "|---|---|---|---|---|---|"
    )
    rows = [
        f"| {name} | {c['koaml']['train_runtime_s']:.1f} s | {c['bare']['train_runtime_s']:.1f} s | "
        f"{c['train_runtime_ratio']:.3f} | {c['wall_ratio']:.3f} | "
        f"{c['final_loss']['koaml']:.5f} / {c['final_loss']['bare']:.5f} |"
        for name, c in result["cases"].items()
    ]
    return header + "\n" + "\n".join(rows)


BENCH_ROW = re.compile(r"^\| `bench/(?P<script>\w+)\.(?P<ext>py|sh)` \| (?P<what>.*?) \| (?P<result>.*) \|$")


def bench_table(table: str, results: Path) -> tuple[str, list[str]]:
    """The bench table (docs/benchmarks.md) with the result of each script that has a measured JSON in ``results`` (not a
    --smoke or --dry run, nor one skipped for want of a GPU) replaced by its summary; with the scripts so updated."""
    lines, updated = [], []
    for line in table.splitlines():
        row = BENCH_ROW.match(line)
        path = results / f"{row['script']}.json" if row else None
        if path is not None and path.is_file():
            measured = json.loads(path.read_text())
            if measured.get("summary") and not any(measured.get(k) for k in ("smoke", "dry", "skipped")):
                line = f"| `bench/{row['script']}.{row['ext']}` | {row['what']} | {measured['summary']} |"
                updated.append(row["script"])
        lines.append(line)
    return "\n".join(lines), updated


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the lines between the ``name`` markers replaced by ``body``."""
    pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(\n<!-- end: {name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{PAGES[name].name} has no <!-- generated: {name} --> ... <!-- end: {name} --> section")
    return pattern.sub(lambda m: m[1] + body + m[2], text)


def section(text: str, name: str) -> str:
    """The body between the ``name`` markers."""
    match = re.search(rf"<!-- generated: {name} -->\n(.*?)\n<!-- end: {name} -->", text, re.DOTALL)
    return match[1] if match else ""


def page_section(name: str) -> str:
    """The generated table ``name`` as its page (PAGES) has it now."""
    return section(PAGES[name].read_text(), name)


def _write(name: str, body: str) -> None:
    PAGES[name].write_text(replace_section(PAGES[name].read_text(), name, body))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="results", help="the demo's results folder")
    parser.add_argument("--smollm2", help="config/examples/smollm2.yaml's results folder (else left as it is)")
    parser.add_argument("--bench", default="bench/results", help="the bench scripts' JSON results")
    args = parser.parse_args(argv)
    tables = {"demo": args.demo, "smollm2": args.smollm2}
    done = [name for name, folder in tables.items() if folder and (Path(folder) / "compare/summary.csv").is_file()]
    for name in done:
        _write(name, comparison_table(Path(tables[name]) / "compare/summary.csv"))
    table, updated = bench_table(page_section("bench"), Path(args.bench))
    _write("bench", table)
    overhead = Path(args.bench) / "train_overhead.json"
    if overhead.is_file() and not json.loads(overhead.read_text()).get("smoke"):
        _write("train_overhead", train_overhead_table(json.loads(overhead.read_text())))
    tables_done = ", ".join(f"{n} ({PAGES[n].relative_to(REPO)})" for n in done) or "none: no compare/summary.csv"
    measured = ", ".join(updated) or f"none measured in {args.bench}"
    print(f"regenerated the tables {tables_done}; the results of {len(updated)} bench scripts ({measured})")
    make_reference.main([])


if __name__ == "__main__":
    main()
