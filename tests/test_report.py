"""The HTML report and its plots, from constructed results."""

import base64
import json
import re

import pandas as pd
from browser import CHROMIUM_FLAGS

from koaml.compare import COLUMNS
from koaml.io import write_yaml
from koaml.report import write_report


def fake_run(tmp_path, name, losses):
    trained = tmp_path / name / "trained"
    trained.mkdir(parents=True)
    history = [{"step": i * 10, "loss": loss} for i, loss in enumerate(losses, 1)] + [
        {"step": 30, "eval_loss": losses[-1]}
    ]
    (trained / "log_history.json").write_text(json.dumps(history))
    summary = {
        "method": "lora",
        "global_step": 30,
        "train_loss": losses[-1],
        "final_eval_loss": losses[-1],
        "config_hash": "abc123",
        "wall_time_s": 12.5,
    }
    (trained / "train_summary.json").write_text(json.dumps(summary))
    write_yaml(tmp_path / name / "config.yaml", {"peft": {"lora_r": 8}})
    return {"trained": str(trained), "config": str(tmp_path / name / "config.yaml")}


def summary_rows(runs):
    rows = []
    for i, run in enumerate(runs):
        rows.append(
            {
                "run": run,
                "base_model": "base",
                "benchmark": "bench",
                "task": "t",
                "metric": "acc",
                "filter": "none",
                "base_score": 0.3,
                "score": 0.4 + 0.1 * i,
                "delta": 0.1 + 0.1 * i,
                "ci_low": 0.05,
                "ci_high": 0.2,
                "p_value": 0.01,
                "test": "mcnemar",
                "significant": True,
                "base_stderr": 0.02,
                "stderr": 0.02,
                "n": 100,
                "status": "ok",
            }
        )
    rows.append({**rows[0], "run": "broken", "score": None, "delta": None, "significant": None, "status": "missing"})
    return pd.DataFrame(rows, columns=COLUMNS)


def test_report_is_self_contained_with_tables_plots_and_configs(tmp_path):
    runs = {name: fake_run(tmp_path, name, [2.0, 1.0, 0.5]) for name in ("rank_lora_r4", "rank_lora_r8")}
    for name, r in zip(runs, (4, 8), strict=True):
        runs[name]["sweep"] = {"group": "rank", "point": {"peft.lora_r": r}}
    summary_rows(list(runs)).to_csv(tmp_path / "summary.csv", index=False)
    out = tmp_path / "report" / "index.html"
    write_report(tmp_path / "summary.csv", runs, out, "exp")
    page = out.read_text()
    assert "<h1>koa-ml report: exp</h1>" in page
    assert page.count('<tr class="sig">') == 2 and page.count('<tr class="missing">') == 1
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # scores, losses, the rank sweep
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r'(src|href)="https?://', page), "the report must open without network"
    assert "lora_r: 8" in page and "abc123" in page and "transformers" in page
    assert {p.name for p in (tmp_path / "report/plots").iterdir()} == {
        "scores_bench.png",
        "losses.png",
        "sweep_rank_bench_t_acc.png",
    }


def test_report_renders_in_a_real_browser(tmp_path, browser):
    """Headless Chromium loads the report from disk: tables present, no broken image; screenshot kept."""
    import shutil
    import subprocess

    from conftest import REPO

    runs = {name: fake_run(tmp_path, name, [2.0, 1.0, 0.5]) for name in ("a", "b")}
    summary_rows(list(runs)).to_csv(tmp_path / "summary.csv", index=False)
    write_report(tmp_path / "summary.csv", runs, tmp_path / "report/index.html", "browser-check")
    probe = tmp_path / "report/probe.html"
    probe.write_text(
        (tmp_path / "report/index.html")
        .read_text()
        .replace(
            "</body>",
            "<script>window.addEventListener('load', () => {document.body.dataset.images = document.images.length;"
            "document.body.dataset.broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;"
            "document.body.dataset.tables = document.querySelectorAll('table tbody tr').length;});</script></body>",
        )
    )
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="2"' in dom and 'data-broken="0"' in dom, dom[:500]
    assert 'data-tables="5"' in dom  # 3 summary rows + 2 training rows
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1280,1600", f"--screenshot={shot}", (tmp_path / "report/index.html").as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "report.png")


def test_reward_curves_for_dpo_and_grpo_runs(tmp_path):
    from koaml.report import plot_losses, plot_rewards

    sft = [{"step": 10, "loss": 1.2}, {"step": 20, "loss": 0.8}]
    dpo = [{"step": 10, "loss": 0.69, "rewards/margins": 0.01}, {"step": 20, "loss": 0.5, "rewards/margins": 0.4}]
    grpo = [{"step": 10, "loss": 0.0, "reward": 0.2}, {"step": 20, "loss": -0.01, "reward": 0.6}]
    assert plot_rewards({"sft": sft}, tmp_path) is None
    rewards = plot_rewards({"sft": sft, "dpo": dpo, "grpo": grpo}, tmp_path)
    assert rewards.name == "rewards.png" and rewards.stat().st_size > 1000
    # GRPO's loss (around 0, negative at times) stays off the log-scale loss plot; it has only GRPO -> no plot
    assert plot_losses({"grpo": grpo}, tmp_path) is None
    assert plot_losses({"sft": sft, "grpo": grpo}, tmp_path).name == "losses.png"


def test_seed_replicates_are_one_bar_with_a_point_per_seed(tmp_path):
    from koaml.report import plot_scores

    rows = summary_rows(["r_rep1", "r_rep2"])
    rows = rows[rows.status == "ok"].assign(replicate_of="r")
    group = rows.iloc[[0]].assign(run="r", replicate_of=None, score=rows.score.mean(), seeds=2)
    (path,) = plot_scores(pd.concat([rows, group], ignore_index=True), tmp_path)
    assert path.name == "scores_bench.png" and path.stat().st_size > 1000


def test_protocol_table_shows_the_settings_each_number_comes_from(tmp_path):
    from koaml.report import protocol_rows

    folder = tmp_path / "eval"
    folder.mkdir()
    protocol = {
        "gen": {"output_type": "generate_until", "num_fewshot": 5, "repeats": 1, "metrics": ["exact_match"],
                "filters": ["strict-match"], "apply_chat_template": False, "set_by_benchmark": ["max_new_tokens"],
                "generation_kwargs": {"until": ["Question:"], "max_gen_toks": 512, "do_sample": False}},
        "mc": {"output_type": "multiple_choice", "num_fewshot": 0, "repeats": 1, "metrics": ["acc"],
               "filters": ["none"], "apply_chat_template": True, "set_by_benchmark": [], "generation_kwargs": None},
    }  # fmt: skip
    (folder / "protocol.json").write_text(json.dumps(protocol))
    rows = protocol_rows({"bench": str(folder), "older": str(tmp_path / "no-protocol-yet")}).set_index("task")
    assert rows.loc["gen", "generation"] == "until=['Question:'], max_gen_toks=512, do_sample=False"
    assert rows.loc["gen", "set by the benchmark file"] == "max_new_tokens" and rows.loc["gen", "few-shot"] == 5
    assert rows.loc["mc", "generation"] == "(log-likelihood)" and rows.loc["mc", "chat template"] == "yes"
    assert rows.loc["mc", "metrics (filters)"] == "acc (none)" and len(rows) == 2
