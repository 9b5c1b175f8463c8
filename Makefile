# Two commands do all set-up on a fresh machine with Python >= 3.11 and make:
#   make demo   create .venv, install, reproduce the paper on the embedded world
#               (experiments/configs/paper.py; report in workdir/demo/report.md)
#   make test   create .venv, install, run the whole suite
#   make faults kill -9 / corrupt / fill the disk under the serving path and data
#               job, check nothing acknowledged is lost (bench_results/faults.md)
#   make serve  serve the newest committed model version on 127.0.0.1:$(PORT)
#               (a near-line one stays current); the demo's CTR model is
#               exported only if there is none, or with EXPORT=1
#   make realdata  a real-image development set (docs/realdata.md): emoji
#               sets from the npm registry (needs npm) converted into
#               $(REALDATA); the images are never committed
# Set PYTHON=python3.12 (etc.) to pick the interpreter that creates .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# mmrec with the extra $(1), pinned: through uv, else pip (see $(STAMP)).
install = $(BIN)/uv pip install --python $(BIN)/python --quiet \
  --compile-bytecode -c constraints.txt -e '.[$(1)]' || \
  $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(1)]'
WORKDIR ?= workdir/demo
# make serve: the demo's CTR run to export (newest ctr-<hash> stage) and port.
SERVE_VARIANT ?= simtier_make
CTR_RUN ?= $(shell ls -td $(WORKDIR)/ctr-*/$(SERVE_VARIANT)/seed_0 2>/dev/null | head -1)
SERVING ?= $(WORKDIR)/serving
PORT ?= 8000
EXPORT ?= 0
# make realdata: where npm installs the packages, and the dataset built from
# them (OpenMoji CC BY-SA 4.0; Microsoft Fluent Emoji and emojibase MIT).
REALDATA_NPM ?= workdir/realdata_npm
REALDATA ?= workdir/realdata
REALDATA_PACKAGES := openmoji@17.0.0 emojibase-data@17.0.0 \
  @lobehub/fluent-emoji-flat@1.1.0 @lobehub/fluent-emoji-3d@1.1.0

.PHONY: demo test bench faults serve realdata clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	  "mmrec needs Python >= 3.11; found " + sys.version.split()[0] + \
	  " (set PYTHON=python3.11 or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv (pinned in constraints.txt) installs the same versions as pip:
	@# 18 s from a cold cache where pip took 39-45 s from a warm one on a
	@# 2-core machine (parallel downloads, unpacking and bytecode compiling).
	@# It reads no pip.conf: where only pip's configured index is reachable
	@# (a mirror), pip installs the same pins instead.
	$(BIN)/python -m pip install --quiet -c constraints.txt uv
	$(call install,test)
	@# The editable install leaves our own modules uncompiled; where
	@# PYTHONDONTWRITEBYTECODE is set (CI), every process the suite starts
	@# would compile them again (~0.5 s each). A stale .pyc is only ignored.
	$(BIN)/python -m compileall -q mmrec experiments
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.main --config=experiments/configs/paper.py \
	  --workdir=$(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

bench: $(STAMP)
	$(BIN)/python -m experiments.main --config=experiments/configs/bench.py \
	  --workdir=bench_results

# kill -9 of the service, export, near-line and converter at random points, a
# corrupt delta log, a full disk: bench_results/faults.md (experiments/bench_faults.py)
faults: $(STAMP)
	$(BIN)/python -m experiments.main --config=experiments/configs/bench.py \
	  --config.benchmarks=faults --workdir=bench_results

serve: $(STAMP)
	$(BIN)/python -m experiments.main --config=experiments/configs/export.py \
	  --config.ctr_workdir=$(CTR_RUN) --workdir=$(SERVING) \
	  --config.only_if_none=$(if $(filter 1,$(EXPORT)),False,True)
	MMREC_SERVING_DIR=$(SERVING) $(BIN)/uvicorn --factory \
	  mmrec.serving.service:app_from_env --host 127.0.0.1 --port $(PORT)

# Installed once (a reinstall rewrites npm's lock files, and the data job
# refuses to reuse a dataset whose source changed): rm -r $(REALDATA_NPM)
# to upgrade. resvg-py (the realdata extra) rasterises the SVG drawings.
$(REALDATA_NPM)/.installed:
	@command -v npm >/dev/null || { echo 'make realdata needs npm (Node.js)'; exit 1; }
	npm install --prefix $(REALDATA_NPM) --save-exact --no-audit --no-fund \
	  --ignore-scripts $(REALDATA_PACKAGES)
	touch $@

realdata: $(STAMP) $(REALDATA_NPM)/.installed
	$(call install,realdata)
	$(BIN)/python -m experiments.main --config=experiments/configs/data.py:emoji \
	  --config.source_dir=$(REALDATA_NPM)/node_modules --workdir=$(REALDATA)

clean:
	rm -rf $(VENV) workdir bench_results
