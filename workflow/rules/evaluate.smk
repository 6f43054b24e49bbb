# The same pattern as run_config (train.smk). Kept as two rules: merging them changes a rule's code, and
# Snakemake's code trigger would then rerun every existing run or evaluation once.
rule benchmark_config:
    """The benchmark's resolved config. Rewritten only when it changes, which reruns its evaluations."""
    output:
        "results/benchmarks/{bench}.yaml",
    localrule: True
    params:
        benchmark=lambda w: EXP.benchmark(w.bench).config.as_dict(),
    run:
        from koaml.io import write_yaml

        write_yaml(output[0], params.benchmark)


if not EXP.group_by_model:

    rule evaluate:
        """One model on one benchmark suite with lm-eval; writes results and per-sample logs."""
        input:
            config="results/benchmarks/{bench}.yaml",
            model=lambda w: model_input(w.model),
            tasks=lambda w: custom_task_files(w.bench),
        output:
            # update(): not deleted before the job, and restored if a rerun fails (earlier results are kept).
            update(directory("results/eval/{model}/{bench}")),
        log:
            "logs/evaluate/{model}/{bench}.log",
        threads: 4
        resources:
            gres=evaluate_gres,
            mem_mb=evaluate_mem_mb,
        params:
            model=lambda w: model_path(w.model),
            adapter=lambda w: adapter_option(w.model),
        shell:
            "koaml evaluate --config {input.config} --model {params.model} {params.adapter}"
            " --out {output} --threads {threads} > {log} 2>&1"

else:

    rule evaluate_model:
        """evaluation.group_by_model: one model on every benchmark in one job, loaded once. Results stay one
        folder per benchmark; a benchmark whose inputs did not change keeps its folder (koaml.evaluate)."""
        input:
            configs=expand("results/benchmarks/{bench}.yaml", bench=EXP.benchmarks),
            model=lambda w: model_input(w.model),
            tasks=[path for bench in EXP.benchmarks for path in custom_task_files(bench)],
        output:
            [update(directory(f"results/eval/{{model}}/{bench}")) for bench in EXP.benchmarks],
        log:
            "logs/evaluate/{model}.log",
        threads: 4
        resources:
            gres=evaluate_gres,
            mem_mb=evaluate_mem_mb,
            runtime=evaluate_model_runtime,
        params:
            model=lambda w: model_path(w.model),
            adapter=lambda w: adapter_option(w.model),
            suites=lambda w, output: " ".join(
                f"--suite results/benchmarks/{bench}.yaml {out}" for bench, out in zip(EXP.benchmarks, output)
            ),
        shell:
            "koaml evaluate-model --model {params.model} {params.adapter} {params.suites} --threads {threads}"
            " > {log} 2>&1"
