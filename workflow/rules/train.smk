rule run_config:
    """The run's resolved recipe. Rewritten only when it changes (params trigger), which reruns the run."""
    output:
        "results/runs/{run}/config.yaml",
    localrule: True
    params:
        recipe=lambda w: EXP.runs[w.run].recipe.as_dict(),
    run:
        from koaml.io import write_yaml

        write_yaml(output[0], params.recipe)


rule prepare_data:
    """Load, template, split and check the run's training data."""
    input:
        config="results/runs/{run}/config.yaml",
        model=lambda w: start_model_input(w.run),
        data=lambda w: local_dataset_files(w.run),
    output:
        directory("results/data/{run}"),
    log:
        "logs/prepare_data/{run}.log",
    params:
        tokenizer=lambda w: start_model_path(w.run),
    shell:
        "koaml prepare-data --config {input.config} --tokenizer {params.tokenizer} --out {output} > {log} 2>&1"


rule train:
    """Fine-tune (SFT, DPO or GRPO; full, LoRA or QLoRA). Checkpoints live outside the output, so a rerun resumes."""
    input:
        config="results/runs/{run}/config.yaml",
        data="results/data/{run}",
        model=lambda w: start_model_input(w.run),
        rewards=lambda w: reward_files(w.run),
    output:
        directory("results/runs/{run}/trained"),
    log:
        "logs/train/{run}.log",
    threads: 4
    resources:
        gres=train_gres,
        mem_mb=run_mem_mb,
    params:
        model=lambda w: start_model_path(w.run),
        checkpoints="results/checkpoints/{run}",
    shell:
        "koaml train --config {input.config} --model {params.model} --data {input.data}"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads} > {log} 2>&1"


rule merge:
    """Merge a LoRA/QLoRA adapter into the base weights."""
    input:
        config="results/runs/{run}/config.yaml",
        adapter="results/runs/{run}/trained",
        model=lambda w: start_model_input(w.run),
    output:
        directory("results/runs/{run}/merged"),
    log:
        "logs/merge/{run}.log",
    resources:
        mem_mb=run_mem_mb,
    params:
        base=lambda w: start_model_path(w.run),
    shell:
        "koaml merge --config {input.config} --base {params.base} --adapter {input.adapter} --out {output} > {log} 2>&1"
