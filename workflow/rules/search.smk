# Adaptive search (runs.<name>.search): trials <name>_t1 .. are ordinary runs (prepare, train, merge); their
# parameters come from round files that Optuna writes once the rounds before have their objectives (koaml.search).


rule search_config:
    """What identifies the search's study. Rewritten only when it changes, which starts a new study."""
    output:
        "results/search/{search}/search.yaml",
    localrule: True
    params:
        search=lambda w: EXP.searches[w.search].as_dict(),
    run:
        from koaml.io import write_yaml

        write_yaml(output[0], params.search)


rule search_ask:
    """Tell the study every earlier trial's objective, then ask it for this round's trials (idempotent)."""
    input:
        search="results/search/{search}/search.yaml",
        earlier=lambda w: trial_outcomes(w.search, rounds_before=int(w.round)),
    output:
        "results/search/{search}/round{round}.yaml",
    log:
        "logs/search/{search}/round{round}.log",
    localrule: True
    params:
        trials=lambda w: " ".join(EXP.searches[w.search].round_trials(int(w.round))),
        earlier=lambda w: " ".join(["--earlier", *earlier_trials(w.search, int(w.round))]) if int(w.round) > 1 else "",
    shell:
        "koaml search-ask --search {input.search} --round {wildcards.round} --trials {params.trials}"
        " {params.earlier} --out {output} > {log} 2>&1"


rule trial_config:
    """A trial's recipe: the run's, with the parameters its round asked for; and trial.json, which marks it as a
    trial (a trial that diverges is recorded as failed instead of failing the search)."""
    input:
        round=lambda w: trial_round_file(w.run),
    output:
        config="results/runs/{run}/config.yaml",
        trial=f"results/runs/{{run}}/{TRIAL_FILE}",
    wildcard_constraints:
        run=rf"(?:{_alternation(EXP.searches)})_t\d+",  # a pattern, not the names: fast with many trials
    localrule: True
    params:
        search=lambda w: EXP.runs[w.run].search,
    run:
        from koaml.search import write_trial

        write_trial(EXP.searches[params.search], input.round, wildcards.run, output.config, output.trial)


ruleorder: trial_config > run_config


rule evaluate_trial:
    """A trial on its search's validation benchmark (the objective), with lm-eval like any evaluation."""
    input:
        config=lambda w: f"results/benchmarks/{EXP.searches[w.search].objective.benchmark}.yaml",
        model=lambda w: final_model_dir(w.trial),
        tasks=lambda w: custom_task_files(EXP.searches[w.search].objective.benchmark),
    output:
        directory("results/search/{search}/eval/{trial}"),
    log:
        "logs/search/{search}/eval/{trial}.log",
    threads: 4
    resources:
        gres=trial_evaluate_gres,
        mem_mb=lambda w, input, attempt: evaluate_mem_mb(w, input, attempt, model=w.trial),
    shell:
        "koaml evaluate --config {input.config} --model {input.model} --out {output} --threads {threads} > {log} 2>&1"


rule search_summary:
    """Tell the last round, then write trials.csv, best.yaml (the best trial's recipe), importances.json and the
    search's cost (every trial's training)."""
    input:
        search="results/search/{search}/search.yaml",
        outcomes=lambda w: trial_outcomes(w.search),
    output:
        csv="results/search/{search}/trials.csv",
        best="results/search/{search}/best.yaml",
        model="results/search/{search}/best_model.txt",
        importances="results/search/{search}/importances.json",
        cost="results/search/{search}/train_summary.json",
    log:
        "logs/search/{search}/summary.log",
    localrule: True
    params:
        trials=lambda w: " ".join(EXP.searches[w.search].trials),
    shell:
        "koaml search-summary --search {input.search} --trials {params.trials} --out results/search/{wildcards.search}"
        " > {log} 2>&1"
