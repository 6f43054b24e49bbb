rule benchmark_config:
    """The benchmark's resolved config. Rewritten only when it changes, which reruns its evaluations."""
    output:
        "results/benchmarks/{bench}.yaml",
    params:
        benchmark=lambda w: EXP.benchmarks[w.bench].config,
    localrule: True
    run:
        from koaml.io import write_yaml

        write_yaml(output[0], params.benchmark)


def custom_task_files(bench):
    """The YAML files of a benchmark's local lm-eval tasks, so that editing them reruns it."""
    task_dir = EXP.benchmarks[bench].config.get("include_path")
    return sorted(str(p) for p in Path(task_dir).rglob("*.yaml")) if task_dir else []


rule evaluate:
    """One model on one benchmark suite with lm-eval; writes results and per-sample logs."""
    input:
        config="results/benchmarks/{bench}.yaml",
        model=lambda w: model_input(w.model),
        tasks=lambda w: custom_task_files(w.bench),
    output:
        # update(): not deleted before the job, and restored if a rerun fails (earlier results are kept).
        update(directory("results/eval/{model}/{bench}")),
    params:
        model=lambda w: model_path(w.model),
        adapter=lambda w: adapter_option(w.model),
    threads: 4
    resources:
        gres=sized(evaluate_gpu, empty=""),
        mem_mb=host_memory(lambda w: model_path(w.model)),
    log:
        "logs/evaluate/{model}/{bench}.log",
    shell:
        "koaml evaluate --config {input.config} --model {params.model} {params.adapter}"
        " --out {output} --threads {threads} > {log} 2>&1"
