# Thin entry point: editing this file reruns the (cheap) curves table; the logic is koaml.curves.
import logging

from koaml.curves import write_curves

logging.basicConfig(filename=snakemake.log[0], filemode="w", level=logging.INFO, force=True)
write_curves(snakemake.params.points, snakemake.output[0], snakemake.params.alpha)
logging.info("wrote %s", snakemake.output[0])
