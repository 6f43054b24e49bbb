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
