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


def finished_runs():
    """The report's per-run inputs, for the runs whose training has finished."""
    return {
        name: {"trained": f"results/runs/{name}/trained", "config": f"results/runs/{name}/config.yaml", "sweep": run.sweep}
        for name, run in EXP.runs.items()
        if Path(f"results/runs/{name}/trained/train_summary.json").exists()
    }


# When jobs fail (with --keep-going, the others still finish), the summary and report of what has finished go
# to results/partial/, marked partial; the final ones (results/compare, results/report) are written only when
# every job is done, and results/partial/ is then removed.
onerror:
    from koaml.compare import write_partial
    from koaml.report import write_report
    from koaml.status import missing_reasons, status

    write_partial(
        comparison_pairs(),
        missing_reasons(EXP, status(EXP)),
        "results/partial/summary.csv",
        "results/partial/summary.md",
    )
    write_report("results/partial/summary.csv", finished_runs(), "results/partial/report.html", EXP.name)
    print("koa-ml: some jobs failed; what has finished is in results/partial/summary.md and results/partial/report.html")


onsuccess:
    shutil.rmtree("results/partial", ignore_errors=True)
