"""Comparison tables from lm-eval result files."""

import json
import math

import pandas as pd
import pytest

from koaml.compare import COLUMNS, compare, summarize, write_summary
from koaml.evaluate import gen_kwargs
from koaml.results import metric_rows


def results_dir(tmp_path, name, acc, em, mc_items=None):
    """An evaluation folder like `koaml evaluate` writes; ``mc_items`` are per-document 0/1 scores."""
    folder = tmp_path / name
    folder.mkdir()
    if mc_items is not None:
        acc = sum(mc_items) / len(mc_items)
        rows = [{"doc_id": i, "filter": "none", "acc": v} for i, v in enumerate(mc_items)]
        (folder / "samples_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
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
    rows = metric_rows(
        {
            "results": {
                "t": {
                    "alias": "t",
                    "acc,none": 0.5,
                    "acc_stderr,none": 0.1,
                    "acc_norm,none": 0.6,
                    "acc_norm_stderr,none": "N/A",
                }
            },
            "n-samples": {"t": {"effective": 10}},
        }
    )
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
    assert "| r | b | bench | mc | acc | 25.0 | 50.0 | +25.0 |" in md and "exact_match (first-number)" in md


def test_greedy_generation_by_default():
    assert gen_kwargs({"temperature": 0.0, "max_new_tokens": 8}) == {
        "max_gen_toks": 8,
        "do_sample": False,
        "temperature": 0.0,
    }
    assert gen_kwargs({"temperature": 0.7, "max_new_tokens": 8})["do_sample"] is True
    assert gen_kwargs({"per_device_batch_size": 8}) == {}  # nothing written: each task's own generation_kwargs


def test_paired_statistics_from_per_sample_logs(tmp_path):
    base_items = [0] * 60 + [1] * 40
    tuned_items = [1] * 30 + [0] * 30 + [1] * 38 + [0] * 2  # 30 fixed, 2 broken
    base = results_dir(tmp_path, "base", 0, 0, mc_items=base_items)
    run = results_dir(tmp_path, "run", 0, 0, mc_items=tuned_items)
    row = compare(run, base).query("task == 'mc'").iloc[0]
    assert row.delta == pytest.approx(0.28) and row.test == "mcnemar" and row.p_value < 0.05
    assert row.ci_low < 0.28 < row.ci_high and row.ci_low > 0
    exact = 2 * sum(math.comb(32, i) for i in range(3)) / 2**32
    assert row.p_value == pytest.approx(exact) and row.status == "ok"


def test_missing_evaluation_is_a_row_not_a_gap(tmp_path):
    base = results_dir(tmp_path, "base", acc=0.25, em=0.1)
    table = summarize(
        [{"run": "r", "base_model": "b", "benchmark": "bench", "run_results": tmp_path / "nope", "base_results": base}]
    )
    assert set(table.status) == {"missing"} and len(table) == 2 and table.score.isna().all()


def test_lm_eval_native_output_layout(tmp_path):
    folder = tmp_path / "lm_eval_out" / "model__name"
    folder.mkdir(parents=True)
    (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps({"results": {"t": {"acc,none": 0.5}}}))
    assert compare(folder.parent, folder / "results_2026-01-01T00-00-00.json").iloc[0].delta == 0


def test_compare_cli(tmp_path, capsys):
    from koaml.cli import main

    base = results_dir(tmp_path, "base", 0, 0, mc_items=[0, 1] * 50)
    run = results_dir(tmp_path, "run", 0, 0, mc_items=[1, 1] * 50)
    assert main(["compare", base, run, "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "| mc | acc | 50.0 | 100.0 | +50.0 |" in out and "| yes |" in out
    assert pd.read_csv(tmp_path / "c.csv").iloc[0].test == "mcnemar"


def pair(tmp_path, name, base_items, tuned_items, hours=None):
    base = results_dir(tmp_path, f"{name}-base", 0, 0, mc_items=base_items)
    run = results_dir(tmp_path, name, 0, 0, mc_items=tuned_items)
    summary = None
    if hours is not None:
        summary = tmp_path / f"{name}-train_summary.json"
        summary.write_text(json.dumps({"wall_time_s": hours * 3600, "gpu_hours": 2 * hours}))
    return {"run": name, "base_model": "b", "benchmark": "bench", "run_results": run, "base_results": base,
            "train_summary": summary}  # fmt: skip


def test_significance_is_decided_on_adjusted_p_values_across_the_table(tmp_path):
    strong = pair(tmp_path, "strong", [0] * 100, [1] * 30 + [0] * 70, hours=1.5)
    weak = pair(tmp_path, "weak", [0] * 100, [1] * 6 + [0] * 94)  # raw p = 2 / 2**6 = 0.031
    nothing = pair(tmp_path, "same", [0, 1] * 50, [0, 1] * 50)
    table = summarize([strong, weak, nothing], {"correction": "holm", "alpha": 0.05, "power": 0.8})
    mc = table[table.task == "mc"].set_index("run")
    assert mc.loc["weak", "p_value"] == pytest.approx(2 / 2**6)
    # Holm over the 3 tests (gen rows have no per-item logs, so no test): weak ranks second, times 2
    assert mc.loc["weak", "p_adjusted"] == pytest.approx(2 * 2 / 2**6)
    assert mc.loc["strong", "significant"] and not mc.loc["weak", "significant"]
    unadjusted = summarize([strong, weak, nothing], {"correction": "none", "alpha": 0.05, "power": 0.8})
    assert unadjusted.set_index(["run", "task"]).loc[("weak", "mc"), "significant"]
    assert mc.loc["strong", "train_hours"] == 1.5 and mc.loc["strong", "gpu_hours"] == 3.0
    assert pd.isna(mc.loc["weak", "train_hours"])  # no training summary: a base model, or not trained here


def test_underpowered_rows_are_flagged(tmp_path):
    small = pair(tmp_path, "small", [0] * 20, [1] * 3 + [0] * 17)  # +15 points on 20 items: not detectable
    row = summarize([small]).query("task == 'mc'").iloc[0]
    assert not row.significant and row.mde > abs(row.delta) and row.underpowered
    large = pair(tmp_path, "large", [0] * 2000, [1] * 300 + [0] * 1700)
    row = summarize([large]).query("task == 'mc'").iloc[0]
    assert row.significant and row.mde < 0.05 and not row.underpowered


def test_markdown_names_the_correction_and_the_number_of_tests(tmp_path):
    pairs = [pair(tmp_path, "a", [0] * 50, [1] * 20 + [0] * 30, hours=0.25), pair(tmp_path, "b", [0] * 50, [0] * 50)]
    write_summary(pairs, tmp_path / "s.csv", tmp_path / "s.md", {"correction": "bh", "alpha": 0.05, "power": 0.8})
    md = (tmp_path / "s.md").read_text()
    assert "adjusted for the 2 tests of this table (Benjamini-Hochberg (false discovery rate))" in md
    assert "| p adj. |" in md and "| MDE |" in md and "| 0.25 |" in md  # train hours of run a
    csv = pd.read_csv(tmp_path / "s.csv")
    assert {"p_adjusted", "mde", "underpowered", "train_hours", "gpu_hours"} <= set(csv.columns)


def test_replicates_get_a_group_row_with_the_mean_and_seed_spread(tmp_path):
    base = [0] * 100
    seeds = [[1] * 20 + [0] * 80, [1] * 30 + [0] * 70, [1] * 25 + [0] * 75]  # +20, +30, +25 points
    pairs = []
    for k, items in enumerate(seeds, 1):
        member = pair(tmp_path, f"sft_rep{k}", base, items, hours=0.5)
        pairs.append({**member, "replicate_of": "sft", "base_group": "b"})
    pairs.append(pair(tmp_path, "other", base, [1] * 10 + [0] * 90))
    table = summarize(pairs, {"correction": "bh", "alpha": 0.05, "power": 0.8})
    mc = table[table.task == "mc"].set_index("run")
    group = mc.loc["sft"]
    assert group.delta == pytest.approx(0.25) and group.score == pytest.approx(0.25) and group.seeds == 3
    assert group.seed_sd == pytest.approx(0.05) and group.seed_deltas == "+0.2000 +0.3000 +0.2500"
    assert group.test == "two-level bootstrap" and group.ci_low < 0.25 < group.ci_high and group.significant
    assert group.train_hours == pytest.approx(1.5) and group.base_model == "b"
    assert mc.loc["sft_rep1"].replicate_of == "sft" and pd.isna(mc.loc["sft_rep1"].p_adjusted)  # not tested alone
    assert mc.loc["sft_rep1"].p_value < 0.05  # its own test is still shown
    assert mc.p_adjusted.notna().sum() == 2  # the group and 'other'
    md_path = tmp_path / "s.md"
    write_summary(pairs, tmp_path / "s.csv", md_path)
    assert "| seeds | seed SD |" in md_path.read_text() and "| 3 | 5.0 |" in md_path.read_text()


def test_rows_of_the_task_a_model_was_chosen_by_are_marked_biased(tmp_path):
    base = results_dir(tmp_path, "base", acc=0.25, em=0.1)
    run = results_dir(tmp_path, "run", acc=0.5, em=0.05)
    pairs = [{"run": "r", "base_model": "b", "benchmark": "bench", "run_results": run, "base_results": base,
              "chosen_on": "mc"}]  # fmt: skip
    table = write_summary(pairs, tmp_path / "s.csv", tmp_path / "s.md")
    assert table.set_index("task").chosen_on.to_dict() == {"mc": True, "gen": False}
    md = (tmp_path / "s.md").read_text()
    assert "| chosen on |" in md and "yes (biased)" in md and "selection bias" in md
    del pairs[0]["chosen_on"]
    write_summary(pairs, tmp_path / "s.csv", tmp_path / "s.md")
    assert "chosen on" not in (tmp_path / "s.md").read_text()  # the column shows only when a row is marked
