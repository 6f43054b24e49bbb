def comparison_pairs():
    """One entry per (reference, model) pair of the experiment and benchmark: both evaluation folders (the
    reference's is None when it is not evaluated, e.g. evaluate_base: false)."""
    return [
        {
            "run": model,
            "base_model": reference,
            "benchmark": bench,
            "run_results": eval_dir(model, bench),
            "base_results": eval_dir(reference, bench) if reference in EXP.evaluated_models else None,
        }
        for reference, model in EXP.comparisons
        for bench in EXP.benchmarks
    ]


rule compare:
    """Base-vs-fine-tuned tables: results/compare/summary.csv and summary.md."""
    input:
        [eval_dir(model, bench) for model in EXP.evaluated_models for bench in EXP.benchmarks],
    output:
        csv=report("results/compare/summary.csv", caption="../report/summary.rst", category="Comparison"),
        md="results/compare/summary.md",
    params:
        pairs=comparison_pairs(),
    localrule: True
    log:
        "logs/compare.log",
    script:
        "../scripts/compare.py"


rule report:
    """Self-contained HTML report: tables, plots (scores, losses, sweeps), configs and provenance."""
    input:
        summary="results/compare/summary.csv",
        trained=[f"results/runs/{run}/trained" for run in EXP.runs],
        configs=[f"results/runs/{run}/config.yaml" for run in EXP.runs],
    output:
        html="results/report/index.html",
        plots=report(
            directory("results/report/plots"), patterns=["{name}.png"], caption="../report/plots.rst", category="Plots"
        ),
    params:
        runs={
            name: {"trained": f"results/runs/{name}/trained", "config": f"results/runs/{name}/config.yaml", "sweep": run.sweep}
            for name, run in EXP.runs.items()
        },
        experiment=EXP.name,
    localrule: True
    log:
        "logs/report.log",
    script:
        "../scripts/report.py"
