"""The DAG, planned without running anything (snakemake --dry-run)."""

from collections import Counter

from conftest import planned_jobs, snakemake


def test_demo_dag_evaluates_the_base_once(workflow_dir):
    jobs = planned_jobs(snakemake(workflow_dir, "-n").stdout)
    counts = Counter(rule for rule, _ in jobs)
    assert counts == {
        "build_base_model": 1,
        "run_config": 3,
        "benchmark_config": 2,
        "prepare_data": 3,
        "train": 3,
        "merge": 2,  # LoRA and QLoRA; full fine-tuning has nothing to merge
        "evaluate": 8,  # (1 base + 3 runs) x 2 benchmarks
        "compare": 1,
        "all": 1,
    }
    assert ("evaluate", "model=tiny, bench=demo_arith_mc") in jobs


def test_config_typo_stops_before_any_job(workflow_dir):
    recipe = workflow_dir / "config/recipes/demo_lora.yaml"
    recipe.write_text(recipe.read_text().replace("learning_rate:", "lerning_rate:"))
    proc = snakemake(workflow_dir, check=False)
    assert proc.returncode != 0
    assert "config/recipes/demo_lora.yaml: training.lerning_rate: unknown key; did you mean 'learning_rate'?" in proc.stdout
    assert not (workflow_dir / "results").exists()


def test_wrong_type_in_experiment_is_reported(workflow_dir):
    config = workflow_dir / "config/config.yaml"
    config.write_text(config.read_text().replace("experiment: arith-demo", "experiment: arith-demo\nevaluate_base: sometimes"))
    proc = snakemake(workflow_dir, "-n", check=False)
    assert proc.returncode != 0
    assert "config/config.yaml: evaluate_base: 'sometimes' is not of type 'boolean'" in proc.stdout
