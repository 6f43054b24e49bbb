# Thin entry point: editing this file reruns the (cheap) aggregation; the logic is koaml.compare.
import logging

from koaml.compare import write_summary

logging.basicConfig(filename=snakemake.log[0], filemode="w", level=logging.INFO, force=True)
logging.captureWarnings(True)
write_summary(snakemake.params.pairs, snakemake.output.csv, snakemake.output.md, snakemake.params.statistics)
logging.info("wrote %s and %s", snakemake.output.csv, snakemake.output.md)
