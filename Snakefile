# koa-ml: fine-tune language models and evaluate them against their base models.
#   snakemake --cores all                    # the offline demo (config/config.yaml)
#   snakemake --profile profiles/koa         # on KOA
from snakemake.utils import min_version

min_version("9.0")


# The demo experiment, unless the command line names experiment files (Snakemake would merge the
# demo's runs into them).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        rules.compare.output,
        rules.leaderboard.output,
        rules.report.output,
        curves_table(),
