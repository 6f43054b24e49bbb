# Config validation and the path helpers every rule uses. Logic lives in the koaml package.
import logging
import shutil
import re

from koaml.config import ConfigError, load_experiment, load_yaml
from koaml.data import is_local
from koaml.fetch import requirements as fetch_requirements
from koaml.slurm import MIN_HOST_MEM_MB


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
except ConfigError as error:
    raise WorkflowError(f"koa-ml: {error}") from None


def _alternation(names):
    return "|".join(map(re.escape, sorted(names))) or "(?!)"


wildcard_constraints:
    base=_alternation(EXP.base_models),
    run=_alternation(EXP.runs),
    model=_alternation(EXP.evaluated_models),
    bench=_alternation(EXP.benchmarks),


def base_model_path(base):
    """Where a base model is loaded from: the folder the workflow built or converted, or a hub ID / local path."""
    spec = EXP.base_models[base]
    return f"results/base/{base}/model" if spec.built_by_workflow else spec.model_name


def base_model_input(base):
    """Files a base model's consumers must wait for (none for hub IDs and existing paths)."""
    return [base_model_path(base)] if EXP.base_models[base].built_by_workflow else []


def start_model_path(run):
    """What a run trains from: its base model, or the final model of the run it continues (multi-stage)."""
    parent = EXP.runs[run].parent_run
    return final_model_dir(parent) if parent else base_model_path(EXP.runs[run].base)


def start_model_input(run):
    parent = EXP.runs[run].parent_run
    return [final_model_dir(parent)] if parent else base_model_input(EXP.runs[run].base)


def final_model_dir(run):
    """The folder evaluated for a run: the merged model (LoRA/QLoRA) or the trained model (full)."""
    step = "trained" if EXP.runs[run].method == "full" else "merged"
    return f"results/runs/{run}/{step}"


def model_path(model):
    """The folder or hub ID lm-eval loads (for an unmerged adapter: the model it was trained on)."""
    if model in EXP.adapter_models:
        return start_model_path(EXP.adapter_models[model])
    return final_model_dir(model) if model in EXP.runs else base_model_path(model)


def model_input(model):
    if model in EXP.adapter_models:
        run = EXP.adapter_models[model]
        return [f"results/runs/{run}/trained", *start_model_input(run)]
    return [final_model_dir(model)] if model in EXP.runs else base_model_input(model)


def adapter_option(model):
    """`--adapter <folder>` for an unmerged adapter, else nothing."""
    run = EXP.adapter_models.get(model)
    return f"--adapter results/runs/{run}/trained" if run else ""


def local_dataset_files(run):
    """Local data files of a run's recipe, so that editing them reruns the run."""
    data = EXP.runs[run].recipe["data"]
    specs = [data["train_dataset"], data.get("eval_dataset")]
    return [s["dataset_name"] for s in specs if s and is_local(s["dataset_name"])]


def eval_dir(model, bench):
    return f"results/eval/{model}/{bench}"


# Cluster resources: a GPU sized from the model (koaml.sizing) and host memory, for SLURM. A model the
# workflow has not built yet is sized when its job is about to run. Off a cluster the sizing is only
# informative: a model that cannot be sized there requests nothing.
def on_cluster():
    """Jobs go to SLURM, or a dry run plans for it (the profile sets slurm_* default resources)."""
    if workflow.remote_exec:
        return False
    if workflow.executor_plugin is not None and not workflow.local_exec:
        return True
    defaults = workflow.resource_settings.default_resources
    return defaults is not None and any(name.startswith("slurm_") for name in defaults.keys())


def sized(request, empty):
    """A resource callable from ``request(wildcards, is_built, attempt)``: strict on a cluster, lenient locally."""
    from koaml.sizing import SizingError

    def resource(wildcards, input, attempt):
        try:
            return request(wildcards, lambda model: model in input, attempt)
        except SizingError:
            if on_cluster():
                raise
            return empty

    return resource


def _shape(model, is_built):
    from koaml.slurm import shape_of

    return shape_of(model, built_by_workflow=is_built(model))


def train_gpu(wildcards, is_built, attempt):
    from koaml.slurm import training_gpu

    return training_gpu(EXP.runs[wildcards.run].recipe, _shape(start_model_path(wildcards.run), is_built)).gres


def evaluate_gpu(wildcards, is_built, attempt):
    from koaml.slurm import evaluation_gpu

    return evaluation_gpu(EXP.benchmarks[wildcards.bench].config, _shape(model_path(wildcards.model), is_built)).gres


def host_memory(model_of):
    """mem_mb of a job that loads the model ``model_of(wildcards)``, doubled on each retry."""

    def mem_mb(wildcards, is_built, attempt):
        from koaml.slurm import host_mem_mb

        return host_mem_mb(_shape(model_of(wildcards), is_built), attempt)

    return sized(mem_mb, empty=MIN_HOST_MEM_MB)
