# visalign: `make demo` runs a recipe end to end on this machine; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= seva
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench efficacy compile images clean

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

# Each recipe's demo at 3 seeds: base vs aligned on its target with the paired interval (about an hour on 2 cores).
efficacy: install
	$(BIN)/python bench/efficacy.py --out efficacy-output --seeds 0 1 2 --readme README.md

compile: install
	$(BIN)/python -m visalign_pipelines.compile

# Container images (images/): the CPU image (chart jobs, MLflow), the CUDA image every pipeline step
# and TrainJob node runs, and the rollout image (+ vLLM). Needs a Docker engine (BuildKit).
DOCKER ?= docker
IMAGE_REPO ?= ghcr.io/visalign
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images needs a Docker engine: '$(DOCKER) info' failed here (no docker binary or no daemon). Build on a machine with Docker (BuildKit), e.g. in CI." >&2; exit 2; }
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.cpu -t $(IMAGE_REPO)/visalign:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.cuda --target cuda -t $(IMAGE_REPO)/visalign-cuda:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.cuda --target rollout -t $(IMAGE_REPO)/visalign-rollout:$(IMAGE_TAG) .
	@echo "built; after pushing, pin the pipelines to the CUDA image: VISALIGN_IMAGE=$(IMAGE_REPO)/visalign-cuda@sha256:<digest> make compile"

clean:
	rm -rf demo-output bench-output efficacy-output .pytest_cache
