# Thin entry point: editing this file reruns the (cheap) aggregation; the logic is koaml.compare.
from koaml.compare import write_summary

write_summary(snakemake.params.pairs, snakemake.output.csv, snakemake.output.md)
