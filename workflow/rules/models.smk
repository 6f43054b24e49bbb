rule build_base_model:
    """Build a tiny model from a spec (the offline demo's base model)."""
    input:
        spec=lambda w: EXP.base_models[w.base].build,
        corpus=lambda w: load_yaml(EXP.base_models[w.base].build)["tokenizer"]["corpus"],
    output:
        directory("results/base/{base}/model"),
    log:
        "logs/build_base_model/{base}.log",
    shell:
        "koaml build-model --spec {input.spec} --out {output} > {log} 2>&1"


rule fetch:
    """Cache every hub model, dataset and lm-eval task the experiment needs. Run it where there is
    network (the login node): `snakemake fetch`. Not part of `all`: compute nodes run offline."""
    output:
        "results/fetch/manifest.json",
    params:
        needs=fetch_requirements(EXP),
    localrule: True
    log:
        "logs/fetch.log",
    run:
        from koaml.fetch import fetch

        fetch(params.needs, output[0])
