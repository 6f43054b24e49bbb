"""Every evaluated model's own scores: intervals over items, ranks that tie where intervals overlap, the matrix."""

import json

import pandas as pd
import pytest
from test_compare import results_dir

from koaml.leaderboard import leaderboard, matrix, rank, shown_matrix, write_leaderboard


def test_interval_is_a_bootstrap_over_the_items_around_the_score(tmp_path):
    folder = results_dir(tmp_path, "m", acc=None, em=0.2, mc_items=[1] * 30 + [0] * 70)
    table = leaderboard({"m": {"bench": folder}})
    mc = table[table.task == "mc"].iloc[0]
    assert mc.score == pytest.approx(0.3) and mc.n == 100 and mc.ci == "bootstrap"
    assert 0.2 < mc.ci_low < 0.3 < mc.ci_high < 0.4  # about 0.3 +- 1.96 x 0.046
    gen = table[table.task == "gen"].iloc[0]  # no per-item logs and no stderr: no interval, no rank
    assert gen.score == 0.2 and pd.isna(gen.ci_low) and pd.isna(gen["rank"])


def test_overlapping_intervals_share_a_rank():
    table = pd.DataFrame(
        {
            "model": ["a", "b", "c", "d"],
            "benchmark": "bench",
            "task": "t",
            "metric": "acc",
            "filter": "none",
            "score": [0.80, 0.75, 0.40, 0.10],
            "ci_low": [0.70, 0.65, 0.30, 0.05],
            "ci_high": [0.90, 0.85, 0.50, 0.15],
        }
    )
    # a and b overlap (both first); c is below both; d is below all three
    assert rank(table).tolist() == [1, 1, 3, 4]


def test_matrix_has_a_row_per_model_and_a_column_per_benchmark_metric(tmp_path):
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    evaluations = {
        name: {
            "one": results_dir(tmp_path / "one", name, acc=None, em=em, mc_items=items),
            "two": results_dir(tmp_path / "two", name, acc=None, em=em, mc_items=items),
        }
        for name, items, em in [
            ("weak", [1] * 20 + [0] * 80, 0.1),
            ("strong", [1] * 80 + [0] * 20, 0.3),
            ("middle", [1] * 50 + [0] * 50, 0.2),
        ]
    }
    table = write_leaderboard(evaluations, tmp_path / "scores.csv", tmp_path / "leaderboard.md")
    wide = matrix(table)
    assert list(wide.index) == ["strong", "middle", "weak"]  # by mean rank
    assert set(wide.columns) == {"one / mc acc", "one / gen exact_match (first-number)", "two / mc acc",
                                 "two / gen exact_match (first-number)"}  # fmt: skip
    assert wide.loc["strong", "one / mc acc"] == pytest.approx(0.8)
    shown = shown_matrix(table)
    assert shown.columns[:2].tolist() == ["model", "mean rank"] and shown["mean rank"].tolist()[0] == "1.0"
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| strong | 1.0 | 80.0 [" in md and "overlap share a rank" in md
    assert pd.read_csv(tmp_path / "scores.csv").shape[0] == 3 * 2 * 2


def test_a_missing_or_damaged_evaluation_is_a_row_that_says_so(tmp_path):
    folder = results_dir(tmp_path, "m", acc=0.5, em=0.1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    table = leaderboard({"m": {"b1": folder, "b2": str(tmp_path / "nothing")}, "x": {"b1": str(tmp_path / "bad")}})
    assert table.status.tolist() == ["ok", "ok", "missing", "damaged"]
    assert "not valid JSON" in table.protocol.iloc[-1]


def test_protocol_recorded_next_to_each_score(tmp_path):
    folder = results_dir(tmp_path, "m", acc=0.5, em=0.1)
    protocol = {
        "mc": {"num_fewshot": 5, "generation_kwargs": None, "apply_chat_template": False},
        "gen": {"num_fewshot": 0, "generation_kwargs": {"max_gen_toks": 8, "until": ["\n"]}, "apply_chat_template": True},
    }  # fmt: skip
    (tmp_path / "m" / "protocol.json").write_text(json.dumps(protocol))
    table = leaderboard({"m": {"b": folder}})
    assert table.protocol.tolist() == ["5-shot, log-likelihood", "0-shot, max_gen_toks=8, chat template"]
