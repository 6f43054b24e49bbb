# Thin entry point: the choice of a run's checkpoint is koaml.selection.
from pathlib import Path

from koaml.selection import select

record = select(
    snakemake.params.objective,
    snakemake.params.candidates,
    f"{snakemake.input.trained}/train_summary.json",
    snakemake.output[0],
    snakemake.params.reported,
    merge_with=(snakemake.input.config, snakemake.params.base),
)
Path(snakemake.log[0]).write_text(record["why"] + "\n")
