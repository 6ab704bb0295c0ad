# cmpipe: two commands do everything on a fresh machine.
#   make run    set up .venv (pinned dependencies + cmpipe) and run the pipeline on config.yaml
#               (its pure-catalogue variant first, for the estimator comparison)
#   make test   same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
CONFIG ?= config.yaml
PURE   ?= configs/pure.yaml
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.cmpipe-installed

.PHONY: all run test test-fast install lint bench clean-results

all: run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the pinned dependencies change. halotools has no wheel for this Python and
# builds from source (several minutes, once; pip caches the wheel afterwards).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The default config compares its catalogue with the pure one (compare.pure_run:
# demo-pure), so `make run` first runs the pure variant (configs/pure.yaml overlay), then
# the default run, whose comparison reads it. Other CONFIGs run as they are.
run: $(STAMP)
ifeq ($(CONFIG),config.yaml)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) $(PURE)
endif
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/snakemake --lint --cores 1

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mock.py
	$(BIN)/python benchmarks/bench_kde.py

clean-results:
	rm -rf results/demo results/tiny
