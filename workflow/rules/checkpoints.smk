# Benchmark curves over training (runs.<name>.checkpoint_eval): the kept steps of a run (<trained>/steps/<step>,
# koaml.snapshots), merged when LoRA, each evaluated on each of its benchmarks like any model; with
# select_checkpoint, the step whose validation score is best becomes the run's model (koaml.selection).


rule merge_step:
    """A kept LoRA/QLoRA step merged into its base, for evaluation; deleted once its evaluations are done."""
    input:
        config="results/runs/{run}/config.yaml",
        trained="results/runs/{run}/trained",
        model=lambda w: start_model_input(w.run),
    output:
        temp(directory("results/runs/{run}/steps/{step}/merged")),
    log:
        "logs/merge/{run}/step{step}.log",
    wildcard_constraints:
        step=r"\d+",
    resources:
        mem_mb=run_mem_mb,
    params:
        base=lambda w: start_model_path(w.run),
    shell:
        "koaml merge --config {input.config} --base {params.base} --adapter {input.trained}/steps/{wildcards.step}"
        " --out {output} > {log} 2>&1"


rule evaluate_step:
    """A run's kept step on one benchmark, with lm-eval like any evaluation."""
    input:
        config="results/benchmarks/{bench}.yaml",
        model=lambda w: step_model_input(w.run, w.step),
        tasks=lambda w: custom_task_files(w.bench),
    output:
        directory("results/checkpoint_eval/{run}/{step}/{bench}"),
    log:
        "logs/evaluate/{run}/step{step}/{bench}.log",
    threads: 4
    resources:
        gres=step_evaluate_gres,
        mem_mb=lambda w, input, attempt: evaluate_mem_mb(w, input, attempt, model=w.run),
    params:
        model=lambda w: step_model_path(w.run, w.step),
    shell:
        "koaml evaluate --config {input.config} --model {params.model} --out {output} --threads {threads} > {log} 2>&1"


rule select_checkpoint:
    """The run's model: the step (kept or last) with the best score on select_checkpoint's validation benchmark, in
    results/runs/{run}/selected (linked, or a kept LoRA step merged again) with selection.json (the scores, why)."""
    input:
        config="results/runs/{run}/config.yaml",
        trained="results/runs/{run}/trained",
        evaluations=lambda w: [c["evaluation"] for c in selection_candidates(w.run)],
        final=lambda w: final_model_dir(w.run),
        model=lambda w: start_model_input(w.run),
    output:
        directory("results/runs/{run}/selected"),
    log:
        "logs/select_checkpoint/{run}.log",
    resources:
        mem_mb=run_mem_mb,
    params:
        objective=lambda w: EXP.runs[w.run].selection,
        candidates=lambda w: selection_candidates(w.run),
        reported=lambda w: EXP.runs[w.run].selection.benchmark in EXP.benchmarks,
        base=lambda w: start_model_path(w.run),
    script:
        "../scripts/select_checkpoint.py"


rule curves:
    """Each run's scores over its steps, base as step 0: results/compare/curves.csv."""
    input:
        [point["folder"] for point in curve_points()],
        {EXP.runs[point["run"]].model_dir for point in curve_points() if point["selection"]},
    output:
        update("results/compare/curves.csv"),
    log:
        "logs/curves.log",
    localrule: True
    params:
        points=curve_points(),
        alpha=EXP.statistics["alpha"],
    script:
        "../scripts/curves.py"
