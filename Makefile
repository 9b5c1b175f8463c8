# Two commands do all set-up on a fresh machine with Python >= 3.11 and make:
#   make demo   create .venv, install, reproduce the paper on the embedded world
#               (experiments/configs/paper.py; report in workdir/demo/report.md)
#   make test   create .venv, install, run the whole suite
# Set PYTHON=python3.12 (etc.) to pick the interpreter that creates .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdir/demo

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	  "mmrec needs Python >= 3.11; found " + sys.version.split()[0] + \
	  " (set PYTHON=python3.11 or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.main --config=experiments/configs/paper.py \
	  --workdir=$(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m experiments.main --config=experiments/configs/bench.py \
	  --workdir=bench_results

clean:
	rm -rf $(VENV) workdir bench_results
