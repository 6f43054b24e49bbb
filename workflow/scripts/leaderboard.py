# Thin entry point: editing this file reruns the (cheap) leaderboard; the logic is koaml.leaderboard.
import logging

from koaml.leaderboard import write_leaderboard

logging.basicConfig(filename=snakemake.log[0], filemode="w", level=logging.INFO, force=True)
logging.captureWarnings(True)
write_leaderboard(snakemake.params.evaluations, snakemake.output.csv, snakemake.output.md, snakemake.params.alpha)
logging.info("wrote %s and %s", snakemake.output.csv, snakemake.output.md)
