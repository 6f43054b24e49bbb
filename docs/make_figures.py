"""The README's tables that the code produces, regenerated from the results that produced them, between marked
lines (``<!-- generated: NAME -->`` ... ``<!-- end: NAME -->``), so that no figure is copied by hand.

- ``demo``: the demo experiment's comparison (``make demo``'s results/compare/summary.csv); deterministic, and
  tests/test_demo.py checks that the README's table is what the suite's demo run produces.
- ``smollm2``: config/examples/smollm2.yaml's comparison (17 minutes on 2 cores; regenerated when its results
  folder is given).
- ``bench``: the result column of the benchmark table, each script's one-line summary from its JSON in
  bench/results/ (a script not run there, or run with --smoke, keeps its row as it is).

    make docs-figures                                   # runs the demo, then this script on its results
    .venv/bin/python docs/make_figures.py --demo results [--smollm2 <folder of the example's results>] [--bench DIR]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"


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


BENCH_ROW = re.compile(r"^\| `bench/(?P<script>\w+)\.(?P<ext>py|sh)` \| (?P<what>.*?) \| (?P<result>.*) \|$")


def bench_table(table: str, results: Path) -> tuple[str, list[str]]:
    """The README's bench table with the result of each script that has a measured JSON in ``results`` (not a
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
        raise SystemExit(f"README.md has no <!-- generated: {name} --> ... <!-- end: {name} --> section")
    return pattern.sub(lambda m: m[1] + body + m[2], text)


def section(text: str, name: str) -> str:
    """The body between the ``name`` markers."""
    match = re.search(rf"<!-- generated: {name} -->\n(.*?)\n<!-- end: {name} -->", text, re.DOTALL)
    return match[1] if match else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="results", help="the demo's results folder")
    parser.add_argument("--smollm2", help="config/examples/smollm2.yaml's results folder (else left as it is)")
    parser.add_argument("--bench", default="bench/results", help="the bench scripts' JSON results")
    args = parser.parse_args(argv)
    text = README.read_text()
    tables = {"demo": args.demo, "smollm2": args.smollm2}
    done = [name for name, folder in tables.items() if folder and (Path(folder) / "compare/summary.csv").is_file()]
    for name in done:
        text = replace_section(text, name, comparison_table(Path(tables[name]) / "compare/summary.csv"))
    table, updated = bench_table(section(text, "bench"), Path(args.bench))
    text = replace_section(text, "bench", table)
    README.write_text(text)
    print(
        f"README.md: regenerated the tables {', '.join(done) or '(none: no compare/summary.csv)'} and the results of "
        f"{len(updated)} bench scripts ({', '.join(updated) or 'none measured in ' + args.bench})"
    )


if __name__ == "__main__":
    main()
