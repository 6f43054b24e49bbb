"""koa-ml: fine-tune and evaluate language models on SLURM with Snakemake."""

__version__ = "0.1.0"
