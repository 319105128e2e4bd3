# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out

.PHONY: install lint demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[training,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/rrec run --out $(DEMO_OUT) --config configs/demo.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	# One BLAS/OpenMP thread per process: tests run torch and Dask side by side on few cores.
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/pipeline_bench.py --reviews 1000000
	$(BIN)/python benchmarks/annotate_bench.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
