# cmpipe: two commands do everything on a fresh machine.
#   make run    set up .venv (pinned dependencies + cmpipe) and run the pipeline on config.yaml
#               (its pure-catalogue variant first, for the estimator comparison)
#   make test   same set-up, then the test suite
#   make report the HTML report of a finished run (report.html; CONFIG as for make run)
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
CONFIG ?= config.yaml
PURE   ?= configs/pure.yaml
FIDUCIAL ?= configs/fiducial.yaml
REPORT ?= report.html
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.cmpipe-installed

.PHONY: all run report test test-fast install lint bench gpu-check clean-results

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
# demo-pure) and its marginalised model with the fiducial one (compare.fiducial_run:
# demo-fiducial), so `make run` first builds what the comparison and the misspecification
# matrix read from those variants (configs/pure.yaml overlay, target comparison_inputs: its
# evaluation and flow metrics; configs/fiducial.yaml overlay, target fiducial_inputs: its
# CNN3D, calibration, eval predictions and metrics), then the default run. Other CONFIGs
# run as they are. The whole pure run:
#   $(BIN)/snakemake --cores 2 --configfile config.yaml configs/pure.yaml
run: $(STAMP)
	@test -f $(CONFIG) || { echo "make run: config file $(CONFIG) does not exist. Fix: CONFIG=path/to/config.yaml (e.g. configs/tiny.yaml)" >&2; exit 1; }
ifeq ($(CONFIG),config.yaml)
	$(BIN)/snakemake comparison_inputs --cores $(CORES) --configfile $(CONFIG) $(PURE)
	$(BIN)/snakemake fiducial_inputs --cores $(CORES) --configfile $(CONFIG) $(FIDUCIAL)
endif
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

# Snakemake's HTML report of a finished run of CONFIG (figures and tables with captions,
# runtimes, the config): one self-contained file, REPORT (make report CONFIG=configs/tiny.yaml).
# The report's tables are made first if missing (a run finished before they existed; seconds).
report: $(STAMP)
	$(BIN)/snakemake metrics_table report_tables --cores $(CORES) --rerun-triggers mtime --configfile $(CONFIG)
	$(BIN)/snakemake --configfile $(CONFIG) --report $(REPORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/snakemake --lint --cores 1

# The CNN3D's GPU path in one command (benchmarks/gpu_check.py): small 32^3 training cubes
# from the tiny config, then the train rule's code with configs/gpu.yaml on whatever device
# TensorFlow finds; prints JSON (device, samples/s, ratio to the 2-core CPU's 487).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mock.py
	$(BIN)/python benchmarks/bench_kde.py

clean-results:
	rm -rf results/demo results/tiny
