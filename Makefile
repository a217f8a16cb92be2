# visalign: `make demo` runs a recipe end to end on this machine; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= seva
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench compile clean

install: $(STAMP)

# torch is pinned with the rest in one resolve (constraints.txt): unpinned, trl/deepspeed pull CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/visalign demo --recipe $(RECIPE)

lint: install
	$(BIN)/ruff check components pipelines tests bench

test: install lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run.py --out bench-output

compile: install
	$(BIN)/python -m visalign_pipelines.compile

clean:
	rm -rf demo-output bench-output .pytest_cache
