"""Comparison tables from lm-eval result files."""

import json

import pandas as pd
import pytest

from koaml.compare import COLUMNS, summarize, write_summary
from koaml.evaluate import gen_kwargs, metric_rows


def results_dir(tmp_path, name, acc, em):
    folder = tmp_path / name
    folder.mkdir()
    results = {
        "results": {
            "mc": {"alias": "mc", "acc,none": acc, "acc_stderr,none": 0.01, "sample_len": 100},
            "gen": {"alias": "gen", "exact_match,first-number": em, "exact_match_stderr,first-number": "N/A"},
        },
        "n-samples": {"mc": {"original": 100, "effective": 100}, "gen": {"original": 50, "effective": 50}},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def test_metric_rows_skip_stderr_and_non_numbers():
    rows = metric_rows({
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.6, "acc_norm_stderr,none": "N/A"}},
        "n-samples": {"t": {"effective": 10}},
    })
    assert rows == [
        {"task": "t", "metric": "acc", "filter": "none", "score": 0.5, "stderr": 0.1, "n": 10},
        {"task": "t", "metric": "acc_norm", "filter": "none", "score": 0.6, "stderr": None, "n": 10},
    ]


def test_summary_has_one_row_per_run_benchmark_metric(tmp_path):
    base = results_dir(tmp_path, "base", acc=0.25, em=0.0)
    run = results_dir(tmp_path, "run", acc=0.75, em=0.5)
    table = summarize([{"run": "r", "base_model": "b", "benchmark": "bench", "run_results": run, "base_results": base}])
    assert list(table.columns) == COLUMNS
    mc = table[table.task == "mc"].iloc[0]
    assert (mc.base_score, mc.score, mc.delta, mc.n) == (0.25, 0.75, 0.5, 100)
    assert table[table.task == "gen"].iloc[0].delta == pytest.approx(0.5)


def test_write_summary_csv_and_markdown(tmp_path):
    base = results_dir(tmp_path, "base", acc=0.25, em=0.1)
    run = results_dir(tmp_path, "run", acc=0.5, em=0.05)
    pairs = [{"run": "r", "base_model": "b", "benchmark": "bench", "run_results": run, "base_results": base}]
    write_summary(pairs, tmp_path / "s.csv", tmp_path / "s.md")
    assert pd.read_csv(tmp_path / "s.csv").delta.round(3).tolist() == [0.25, -0.05]
    md = (tmp_path / "s.md").read_text()
    assert "| r | b | bench | mc | acc | none | 25.0 | 50.0 | +25.0 |" in md and "-5.0" in md


def test_greedy_generation_by_default():
    assert gen_kwargs({"temperature": 0.0, "max_new_tokens": 8}) == {"max_gen_toks": 8, "do_sample": False, "temperature": 0.0}
    assert gen_kwargs({"temperature": 0.7, "max_new_tokens": 8})["do_sample"] is True
