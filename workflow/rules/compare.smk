rule compare:
    """Base-vs-fine-tuned tables: results/compare/summary.csv and summary.md (update(): a failing rerun gives
    the last good tables back instead of deleting them)."""
    input:
        [evaluation_dir(model, bench) for model in EXP.evaluated_models for bench in EXP.benchmarks],
    output:
        csv=update(report("results/compare/summary.csv", caption="../report/summary.rst", category="Comparison")),
        md=update("results/compare/summary.md"),
    log:
        "logs/compare.log",
    localrule: True
    params:
        pairs=comparison_pairs(),
        statistics=EXP.statistics,
    script:
        "../scripts/compare.py"


rule leaderboard:
    """Every evaluated model's own scores with intervals over items, ranked: results/compare/scores.csv and
    leaderboard.md (models x benchmarks, then every score with its protocol)."""
    input:
        [evaluation_dir(model, bench) for model in EXP.evaluated_models for bench in EXP.benchmarks],
    output:
        csv=update(report("results/compare/scores.csv", caption="../report/scores.rst", category="Comparison")),
        md=update("results/compare/leaderboard.md"),
    log:
        "logs/leaderboard.log",
    localrule: True
    params:
        evaluations=evaluations(),
        alpha=EXP.statistics["alpha"],
    script:
        "../scripts/leaderboard.py"


rule report:
    """Self-contained HTML report: tables, plots (scores, losses, sweeps), configs and provenance."""
    input:
        summary="results/compare/summary.csv",
        scores="results/compare/scores.csv",
        trained=[f"results/runs/{run}/trained" for run in EXP.reported_runs],
        configs=[f"results/runs/{run}/config.yaml" for run in EXP.reported_runs],
        selected=[EXP.runs[run].model_dir for run in EXP.reported_runs if EXP.runs[run].selection],
        searches=[f"results/search/{search}/trials.csv" for search in EXP.searches],
        curves=curves_table(),
    output:
        html=update("results/report/index.html"),
        plots=report(
            directory("results/report/plots"), patterns=["{name}.png"], caption="../report/plots.rst", category="Plots"
        ),
    log:
        "logs/report.log",
    localrule: True
    params:
        runs=report_runs(),
        experiment=EXP.name,
        statistics=EXP.statistics,
        protocols=protocol_dirs(),
        searches=report_searches(),
        curves=next(iter(curves_table()), None),
    script:
        "../scripts/report.py"


# When jobs fail (with --keep-going, the others still finish), the summary and report of what has finished go
# to results/partial/, marked partial; the final ones (results/compare, results/report) are written only when
# every job is done, and results/partial/ is then removed.
onerror:
    from koaml.compare import write_partial
    from koaml.leaderboard import write_leaderboard
    from koaml.report import write_report
    from koaml.status import missing_reasons, status

    write_partial(
        comparison_pairs(),
        missing_reasons(EXP, status(EXP)),
        "results/partial/summary.csv",
        "results/partial/summary.md",
        EXP.statistics,
    )
    write_leaderboard(
        evaluations(),
        "results/partial/scores.csv",
        "results/partial/leaderboard.md",
        EXP.statistics["alpha"],
    )
    write_report(
        "results/partial/summary.csv",
        report_runs(finished_only=True),
        "results/partial/report.html",
        EXP.name,
        EXP.statistics,
        protocol_dirs(),
        "results/partial/scores.csv",
        report_searches(),
        next(iter(curves_table()), None),
    )
    print(
        "koa-ml: some jobs failed; what has finished is in results/partial/summary.md, leaderboard.md and "
        "report.html"
    )


onsuccess:
    shutil.rmtree("results/partial", ignore_errors=True)
