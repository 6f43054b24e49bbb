# Thin entry point: editing this file reruns the (cheap) report; the logic is koaml.report.
from koaml.report import write_report

write_report(snakemake.input.summary, snakemake.params.runs, snakemake.output.html, snakemake.params.experiment)
