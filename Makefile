# cmpipe: two commands do everything on a fresh machine.
#   make run    set up .venv (pinned dependencies + cmpipe) and run the pipeline on config.yaml
#               (with its pure-catalogue and fiducial-model companions, in one DAG)
#   make test   same set-up, then the test suite
#   make report the HTML report of a finished run (report.html; CONFIG as for make run)
#   make seeds  after make run: two more training seeds of every network (the seed spreads)
#               and the cube-only CNN3D (the paper's network, no distance input)
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
CONFIG ?= config.yaml
REPORT ?= report.html
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.cmpipe-installed

.PHONY: all run seeds report test test-fast install lint bench gpu-check clean-results

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

# One Snakemake run of CONFIG. The default config compares its catalogue with the pure one
# (compare.pure_run: demo-pure) and its marginalised model with the fiducial one
# (compare.fiducial_run: demo-fiducial) and builds what it reads from those runs inside its
# own DAG (compare.pure_overlay / fiducial_overlay: rule companion_run, a Snakemake of the
# overlay on half the cores beside this run's jobs); all three share the catalogue and the
# projection (results/upstream/). The whole pure run, figures and survey included:
#   $(BIN)/snakemake --cores 2 --configfile config.yaml configs/pure.yaml
run: $(STAMP)
	@test -f $(CONFIG) || { echo "make run: config file $(CONFIG) does not exist. Fix: CONFIG=path/to/config.yaml (e.g. configs/tiny.yaml)" >&2; exit 1; }
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

# The default run's extra training seeds (ablation.seeds: 3 for every network of the
# ablation, the CNN3D and the set estimator; configs/seeds.yaml): the seed spreads of
# ablation/summary.json, sets/seeds.json and comparison/summary.json. About 20 min on 2 cores
# after make run, which it reuses. Params are no rerun trigger here: the overlay only adds
# seeds, and as one more config file it would otherwise rerun the companion runs' job
# (rule companion_run: its command lists the config files) and what reads them.
seeds: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) configs/seeds.yaml --rerun-triggers mtime input code

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
	rm -rf results/demo results/demo-pure results/demo-fiducial results/tiny results/upstream
