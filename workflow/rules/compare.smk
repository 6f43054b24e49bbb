def comparison_pairs():
    """One entry per (run, benchmark): the run's and its base's evaluation folders."""
    return [
        {
            "run": run.name,
            "base_model": EXP.root_base(run.name),
            "benchmark": bench,
            "run_results": eval_dir(run.name, bench),
            "base_results": eval_dir(EXP.root_base(run.name), bench) if EXP.evaluate_base else None,
        }
        for run in EXP.runs.values()
        for bench in EXP.benchmarks
    ]


rule compare:
    """Base-vs-fine-tuned tables: results/compare/summary.csv and summary.md."""
    input:
        [eval_dir(model, bench) for model in EXP.evaluated_models for bench in EXP.benchmarks],
    output:
        csv="results/compare/summary.csv",
        md="results/compare/summary.md",
    params:
        pairs=comparison_pairs(),
    localrule: True
    log:
        "logs/compare.log",
    script:
        "../scripts/compare.py"
