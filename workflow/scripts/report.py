# Thin entry point: editing this file reruns the (cheap) report; the logic is koaml.report.
import logging

from koaml.report import write_report

logging.basicConfig(filename=snakemake.log[0], filemode="w", level=logging.INFO, force=True)
logging.captureWarnings(True)
write_report(
    snakemake.input.summary,
    snakemake.params.runs,
    snakemake.output.html,
    snakemake.params.experiment,
    snakemake.params.statistics,
    snakemake.params.protocols,
    snakemake.input.scores,
    snakemake.params.searches,
    snakemake.params.curves,
)
logging.info("wrote %s", snakemake.output.html)
