# Config validation and the path helpers every rule uses. Logic lives in the koaml package.
import logging
import os
import re
import shlex
import shutil
import sys

from koaml.config import NAME_PATTERN, load_experiment
from koaml.configfiles import ConfigError, load_yaml
from koaml.experiment import FINAL_STEP, evaluation_dir, step_eval_dir
from koaml.experiment import final_model_dir as run_model_dir
from koaml.fetch import requirements as fetch_requirements
from koaml.integrity import check_finished_outputs
from koaml.resources import evaluation_gres, gguf_conversion_mem_mb, model_job_mem_mb, training_gres
from koaml.lifecycle import CONTROLLER_PID_VARIABLE
from koaml.selection import SELECTION_FILE
from koaml.snapshots import STEPS_DIR
from koaml.search import TRIAL_FILE, round_file, search_dir, trial_eval_dir, trial_name, warn_if_study_changed

# Jobs run the `koaml` command of the interpreter that runs the workflow (its venv, on the login node and,
# through the shared file system, on compute nodes), whether or not that venv is activated.
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")
# Training stops (with a checkpoint) when this process is gone: no job outlives its workflow (koaml.lifecycle).
os.environ[CONTROLLER_PID_VARIABLE] = str(os.getpid())

# koaml's warnings (config keys the workflow ignores) on stderr, marked as ours, once.
_koaml_log = logging.getLogger("koaml")
if not _koaml_log.handlers:
    _warnings = logging.StreamHandler()
    _warnings.setLevel(logging.WARNING)
    _warnings.setFormatter(logging.Formatter("koa-ml: warning: %(message)s"))
    _koaml_log.addHandler(_warnings)
    _koaml_log.propagate = False

try:
    EXP = load_experiment(config, source=", ".join(map(str, workflow.configfiles)) or "config")
    check_finished_outputs(EXP)
except ConfigError as error:
    raise WorkflowError(f"koa-ml: {error}") from None
warn_if_study_changed(EXP.searches.values())


def _alternation(names):
    return "|".join(map(re.escape, sorted(names))) or "(?!)"


# Runs and models by the pattern every name follows, not by listing them: Snakemake applies these regexes
# to every path of every job, and a sweep's 1,000 names made that the slowest part of planning.
wildcard_constraints:
    base=_alternation(EXP.base_models),
    run=NAME_PATTERN,
    model=NAME_PATTERN,
    trial=NAME_PATTERN,
    bench=_alternation([*EXP.benchmarks, *EXP.validation_benchmarks]),
    search=_alternation(EXP.searches),
    round=r"\d+",
    step=rf"\d+|{FINAL_STEP}",


def base_model_path(base):
    """Where a base model is loaded from: the folder the workflow built or converted, or a hub ID / local path."""
    return EXP.base_models[base].location


def base_model_input(base):
    """Files a base model's consumers must wait for (none for hub IDs and existing paths)."""
    return [base_model_path(base)] if EXP.base_models[base].built_by_workflow else []


def start_model_path(run):
    """What a run trains from: its base model, or the model of the run it continues (multi-stage)."""
    parent = EXP.runs[run].parent_run
    return EXP.runs[parent].model_dir if parent else base_model_path(EXP.runs[run].base)


def start_model_input(run):
    parent = EXP.runs[run].parent_run
    return [EXP.runs[parent].model_dir] if parent else base_model_input(EXP.runs[run].base)


def final_model_dir(run):
    """A run's model at its last step (the run's model unless select_checkpoint chooses another step)."""
    return run_model_dir(run, EXP.runs[run].method)


def model_path(model):
    """The folder or hub ID lm-eval loads (for an unmerged adapter: the model it was trained on; for a search:
    its best trial's folder, known once the search is done)."""
    if model in EXP.adapter_models:
        return start_model_path(EXP.adapter_models[model])
    if model in EXP.searches:
        return f'"$(cat {best_model_file(model)})"'
    return EXP.runs[model].model_dir if model in EXP.runs else base_model_path(model)


def model_input(model):
    if model in EXP.adapter_models:
        run = EXP.adapter_models[model]
        search = EXP.runs[run].search
        if search:  # its best trial's adapter, known once the search is done
            return [best_model_file(search), *start_model_input(run)]
        chosen = [EXP.runs[run].model_dir] if EXP.runs[run].selection else []
        return [f"results/runs/{run}/trained", *chosen, *start_model_input(run)]
    if model in EXP.searches:
        return [best_model_file(model), *start_model_input(trial_name(model, 1))]
    return [EXP.runs[model].model_dir] if model in EXP.runs else base_model_input(model)


def step_model_path(run, step):
    """A step's model: the last step's (``final``), a kept step merged (LoRA/QLoRA, deleted once evaluated) or the
    kept full model itself."""
    if step == FINAL_STEP:
        return final_model_dir(run)
    if EXP.runs[run].method == "full":
        return f"results/runs/{run}/trained/{STEPS_DIR}/{step}"
    return f"results/runs/{run}/steps/{step}/merged"


def step_model_input(run, step):
    if EXP.runs[run].method == "full" and step != FINAL_STEP:
        return [f"results/runs/{run}/trained"]
    return [step_model_path(run, step)]


def selection_candidates(run):
    """The steps select_checkpoint chooses among (the kept ones and the last): each step's evaluation on the
    validation benchmark, its model folder (None for a kept LoRA/QLoRA step) and, for LoRA/QLoRA, its adapter."""
    spec = EXP.runs[run]
    trained = f"results/runs/{run}/trained"
    return [
        {
            "step": step,
            "evaluation": step_eval_dir(run, step, spec.selection.benchmark),
            # a merged kept step is deleted once evaluated: the rule merges the chosen one again
            "model": None if spec.method != "full" and step != FINAL_STEP else step_model_path(run, step),
            "adapter": (
                None if spec.method == "full" else trained if step == FINAL_STEP else f"{trained}/{STEPS_DIR}/{step}"
            ),
        }
        for step in [*map(str, spec.checkpoint_eval.steps), FINAL_STEP]
    ]


def step_evaluate_gres(wildcards, input):
    """The GPUs of a kept step's evaluation: the run's final model's (the same architecture)."""
    model = start_model_path(wildcards.run)
    bench = EXP.benchmark(wildcards.bench)
    return evaluation_gres([bench.config], model, built_by_workflow=model in input, strict=on_cluster())


def curves_table():
    """results/compare/curves.csv when a run evaluates its steps (checkpoint_eval), else nothing."""
    return ["results/compare/curves.csv"] if any(run.checkpoint_eval for run in EXP.runs.values()) else []


def curve_points():
    """Every point of the curves: per run with checkpoint_eval and benchmark, the model it starts from (step 0, if
    evaluated), each kept step and its last step (``step`` None: read from the run's training summary), with the
    run's selection.json when select_checkpoint chooses one of them."""
    points = []
    for name, run in EXP.runs.items():
        if not run.checkpoint_eval:
            continue
        start = run.parent_run or run.base
        folders = {(step, bench): step_eval_dir(name, step, bench) for step, bench in EXP.step_evaluations(name)}
        if not run.selection:  # the last step is the run's own evaluation
            folders |= {(FINAL_STEP, bench): evaluation_dir(name, bench) for bench in EXP.checkpoint_benchmarks(name)}
        benches = dict.fromkeys(bench for _, bench in folders)
        if start in EXP.evaluated_models:  # step 0
            folders = {("0", b): evaluation_dir(start, b) for b in benches if b in EXP.benchmarks} | folders
        common = {
            "run": name,
            "summary": f"results/runs/{name}/trained/train_summary.json",
            "selection": f"{run.model_dir}/{SELECTION_FILE}" if run.selection else None,
        }
        for (step, bench), folder in folders.items():
            point = "base" if step == "0" else "final" if step == FINAL_STEP else "checkpoint"
            number = None if step == FINAL_STEP else int(step)
            points.append({**common, "step": number, "point": point, "benchmark": bench, "folder": folder})
    return points


def sizing_model_path(model):
    """The model a job's resources are sized from: a search's best trial is sized as its base (trials differ
    only in training settings)."""
    return start_model_path(trial_name(model, 1)) if model in EXP.searches else model_path(model)


def best_model_file(search):
    return f"results/search/{search}/best_model.txt"


def trial_round_file(trial):
    search = EXP.searches[EXP.runs[trial].search]
    return round_file(search.name, search.round_of(trial))


def earlier_trials(search, rounds_before):
    """The trials of a search's rounds before ``rounds_before``."""
    return [t for r in range(1, rounds_before) for t in EXP.searches[search].round_trials(r)]


def trial_outcomes(search, rounds_before=None):
    """What the objective of a search's trials is read from (their trained and final models, and their
    evaluation on the validation benchmark): of the rounds before ``rounds_before``, or of every trial."""
    spec = EXP.searches[search]
    trials = spec.trials if rounds_before is None else earlier_trials(search, rounds_before)
    evaluated = spec.objective.benchmark is not None
    return [
        path
        for trial in trials
        for path in (
            f"results/runs/{trial}/trained",
            final_model_dir(trial),
            *([trial_eval_dir(search, trial)] if evaluated else []),
        )
    ]


def adapter_option(model):
    """`--adapter <folder>` for an unmerged adapter, else nothing: the run's last step's, the step select_checkpoint
    chose (its folder, whose selection.json names the adapter: koaml.selection.chosen_adapter), or the adapter of a
    search's best trial (beside its merged model)."""
    run = EXP.adapter_models.get(model)
    if run is None:
        return ""
    if EXP.runs[run].search:
        return f'--adapter "$(dirname "$(cat {best_model_file(EXP.runs[run].search)})")/trained"'
    return f"--adapter {EXP.runs[run].model_dir if EXP.runs[run].selection else f'results/runs/{run}/trained'}"


def local_dataset_files(run):
    """Local data files of a run's recipe, so that editing them reruns the run."""
    return EXP.runs[run].recipe.local_data_files


def reward_files(run):
    """The Python files of a GRPO run's own reward functions, so that editing them reruns the run."""
    return EXP.runs[run].recipe.reward_files


def custom_task_files(bench):
    """The YAML files of a benchmark's local lm-eval tasks, so that editing them reruns it."""
    return EXP.benchmark(bench).config.local_task_files


def comparison_pairs():
    """One entry per (reference, model) pair of the experiment and benchmark: both evaluation folders (the
    reference's is None when it is not evaluated, e.g. evaluate_base: false)."""
    return [
        {
            "run": model,
            "base_model": reference,
            "benchmark": bench,
            "run_results": evaluation_dir(model, bench),
            "base_results": evaluation_dir(reference, bench) if reference in EXP.evaluated_models else None,
            "train_summary": train_summary(model),
            "replicate_of": replicate_group(model),
            "base_group": replicate_group(reference) or reference,
            "chosen_on": chosen_on(model, bench),
        }
        for reference, model in EXP.comparisons
        for bench in EXP.benchmarks
    ]


def chosen_on(model, bench):
    """The task of ``bench`` a model was chosen by (a search's objective, a run's select_checkpoint), or None."""
    if model in EXP.adapter_models:  # an adapter is chosen as its run or search is
        model = EXP.runs[EXP.adapter_models[model]].search or EXP.adapter_models[model]
    objective = (
        EXP.searches[model].objective if model in EXP.searches else getattr(EXP.runs.get(model), "selection", None)
    )
    return objective.task if objective and objective.benchmark == bench else None


def train_summary(model):
    """What a model's training cost is read from: its run's summary, a search's total over its trials, or None."""
    if model in EXP.searches:
        return f"{search_dir(model)}/train_summary.json"
    return f"results/runs/{model}/trained/train_summary.json" if model in EXP.runs else None


def evaluations():
    """Each evaluated model's evaluation folder of each benchmark (the leaderboard's input)."""
    return {model: {bench: evaluation_dir(model, bench) for bench in EXP.benchmarks} for model in EXP.evaluated_models}


def protocol_dirs():
    """For each benchmark, one evaluation folder whose protocol.json records the settings its tasks ran with."""
    return {bench: evaluation_dir(EXP.evaluated_models[0], bench) for bench in EXP.benchmarks}


def replicate_group(model):
    """The group of a seed replicate run, else None."""
    run = EXP.runs.get(model)
    return run.replicate["group"] if run and run.replicate else None


def report_runs(finished_only=False):
    """The report's per-run inputs (every run but the searches' trials, or those whose training has finished)."""
    return {
        name: {
            "trained": f"results/runs/{name}/trained",
            "config": f"results/runs/{name}/config.yaml",
            "sweep": run.sweep,
            "selected": run.model_dir if run.selection else None,
        }
        for name, run in EXP.runs.items()
        if run.search is None
        and (not finished_only or Path(f"results/runs/{name}/trained/train_summary.json").exists())
    }


def report_searches():
    """The report's per-search inputs: the search's folder and how its objective reads."""
    return {
        name: {
            "dir": str(search_dir(name)),
            "objective": search.objective.label,
            "direction": search.objective.direction,
            "cost": search.cost,
            "sampler": search.sampler,
            "objective_reported": search.objective.benchmark in EXP.benchmarks,
        }
        for name, search in EXP.searches.items()
    }


# Cluster resources: GPUs sized from the model and host memory, for SLURM (koaml.resources). A model the
# workflow has not built yet is sized when its job is about to run. Off a cluster the sizing is only
# informative: a job whose model cannot be sized there requests nothing.
def on_cluster():
    """Jobs go to SLURM, or a dry run plans for it (the profile sets slurm_* default resources).

    Snakemake 9 documents no way for a Snakefile to learn where its jobs run, so this reads three Workflow
    internals: ``workflow.remote_exec`` (this process is a job on a node: its resources are already set),
    ``workflow.local_exec`` (False under a cluster executor plugin such as slurm) and
    ``workflow.resource_settings.default_resources`` (the profile's slurm_* defaults, there in a dry run too).
    """
    if workflow.remote_exec:
        return False
    if not workflow.local_exec:
        return True
    defaults = workflow.resource_settings.default_resources
    return defaults is not None and any(name.startswith("slurm_") for name in defaults.keys())


def train_gres(wildcards, input):
    model = start_model_path(wildcards.run)
    recipe = EXP.runs[wildcards.run].recipe
    return training_gres(recipe, model, built_by_workflow=model in input, strict=on_cluster())


def evaluate_gres(wildcards, input):
    """The GPUs of an evaluation job: of its benchmark, or the most demanding of the model's (evaluate_model)."""
    model = sizing_model_path(wildcards.model)
    benchmarks = [EXP.benchmarks[wildcards.bench]] if "bench" in wildcards.keys() else EXP.benchmarks.values()
    return evaluation_gres([b.config for b in benchmarks], model, built_by_workflow=model in input, strict=on_cluster())


def trial_evaluate_gres(wildcards, input):
    """The GPUs of a trial's evaluation on its search's validation benchmark."""
    model = start_model_path(wildcards.trial)
    bench = EXP.benchmark(EXP.searches[wildcards.search].objective.benchmark)
    return evaluation_gres([bench.config], model, built_by_workflow=model in input, strict=on_cluster())


def evaluate_model_runtime(wildcards, attempt):
    """Minutes for a model's every benchmark in one job: 12 hours each (the evaluate rule's), at most 3 days."""
    return min(720 * len(EXP.benchmarks) * attempt, 3 * 24 * 60)


def run_mem_mb(wildcards, input, attempt):
    """mem_mb of a job that loads the model the run trains from (training, merging)."""
    model = start_model_path(wildcards.run)
    return model_job_mem_mb(model, attempt, built_by_workflow=model in input, strict=on_cluster())


def evaluate_mem_mb(wildcards, input, attempt, model=None):
    model = sizing_model_path(model or wildcards.model)
    return model_job_mem_mb(model, attempt, built_by_workflow=model in input, strict=on_cluster())


def convert_gguf_mem_mb(wildcards, input):
    return gguf_conversion_mem_mb(input.gguf)
