rule build_base_model:
    """Build a tiny model from a spec (the offline demo's base model)."""
    input:
        spec=lambda w: EXP.base_models[w.base].build,
        corpus=lambda w: load_yaml(EXP.base_models[w.base].build)["tokenizer"]["corpus"],
    output:
        directory("results/base/{base}/model"),
    log:
        "logs/build_base_model/{base}.log",
    wildcard_constraints:
        base=_alternation(name for name, spec in EXP.base_models.items() if spec.build),
    shell:
        "koaml build-model --spec {input.spec} --out {output} > {log} 2>&1"


rule convert_gguf:
    """Dequantize a GGUF model into a plain Hugging Face folder, once; later rules load it like any model."""
    input:
        gguf=lambda w: EXP.base_models[w.base].gguf_file,
    output:
        directory("results/base/{base}/model"),
    log:
        "logs/convert_gguf/{base}.log",
    wildcard_constraints:
        base=_alternation(name for name, spec in EXP.base_models.items() if spec.gguf),
    resources:
        mem_mb=convert_gguf_mem_mb,
    params:
        dtype=lambda w: EXP.base_models[w.base].dtype,
    shell:
        "koaml convert-gguf --gguf {input.gguf} --dtype {params.dtype} --out {output} > {log} 2>&1"


rule fetch:
    """Cache every hub model, dataset and lm-eval task the experiment needs. Run it where there is
    network (the login node): `snakemake fetch`. Not part of `all`: compute nodes run offline."""
    output:
        "results/fetch/manifest.json",
    log:
        "logs/fetch.log",
    localrule: True
    params:
        needs=fetch_requirements(EXP),
    run:
        from koaml.fetch import fetch
        from koaml.io import logging_to

        with logging_to(log[0]):
            fetch(params.needs, output[0])
