# rlpipe: `make run` trains the quickstart curriculum from a fresh clone; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/pipeline.yaml
OUTPUT ?=
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
# torch first and pinned: a CPU build of 2.13.0; a bare `torch` requirement resolves to a multi-GB CUDA build.
TORCH := torch==2.13.0

CDK := npx --no-install cdk  # the CLI pinned in package.json; never npm's stray "latest" 3.x
# jsii prints an end-of-life banner on Node 20; harmless.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION ?= 20
CDK_CONTEXT = $(if $(ALERT_EMAIL),-c alert_email=$(ALERT_EMAIL))
CDK_ARGS ?=

.PHONY: help install install-dev run pipeline pipeline-resume validate plan test synth deploy destroy bench clean \
	aws-deploy-sm aws-pipeline chaos

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.train: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[train,cli,jax]"
	@touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev]"
	@touch $@ $(VENV)/.train

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

install: $(VENV)/.train ## create .venv and install rlpipe with training extras

install-dev: $(VENV)/.dev ## create .venv and install everything for tests, CDK and benchmarks

run: $(VENV)/.train ## train the quickstart curriculum locally (runs/quickstart/report.html)
	$(BIN)/rlpipe run configs/quickstart.yaml --resume

pipeline: $(VENV)/.train ## run CONFIG locally (default configs/pipeline.yaml)
	$(BIN)/rlpipe run $(CONFIG) $(if $(OUTPUT),--output $(OUTPUT))

pipeline-resume: $(VENV)/.train ## resume CONFIG's interrupted run from its checkpoints
	$(BIN)/rlpipe run $(CONFIG) --resume $(if $(OUTPUT),--output $(OUTPUT))

validate: $(VENV)/.train ## validate CONFIG
	$(BIN)/rlpipe validate $(CONFIG)

plan: $(VENV)/.train ## show CONFIG's plan and estimated AWS cost
	$(BIN)/rlpipe plan $(CONFIG)

test: $(VENV)/.dev node_modules/.package-lock.json ## run the test suite
	$(BIN)/python -m pytest -q

synth: $(VENV)/.dev node_modules/.package-lock.json ## synthesize into cdk.out/ (offline: no credentials, no Docker)
	$(CDK) synth --quiet $(CDK_CONTEXT) $(CDK_ARGS)

deploy: $(VENV)/.dev node_modules/.package-lock.json ## deploy (needs credentials, Docker, cdk bootstrap): make deploy ALERT_EMAIL=you@example.com
	$(CDK) deploy $(CDK_CONTEXT) $(CDK_ARGS)

aws-deploy-sm: deploy ## alias of deploy (the name the original scripts used)

aws-pipeline: $(VENV)/.train ## start CONFIG as a run on the deployed state machine (rlpipe start CONFIG)
	$(BIN)/rlpipe start $(CONFIG)

destroy: $(VENV)/.dev node_modules/.package-lock.json ## delete the stack (retained bucket, repository and keys stay; see docs/deploy.md)
	$(CDK) destroy $(CDK_ARGS)

bench: $(VENV)/.dev ## benchmarks: bench/results.json + bench/RESULTS.md (QUICK=1: about 8 minutes, into bench/quick/; CLOUD=1: only the AWS model, seconds)
	$(BIN)/python -m bench $(if $(CLOUD),--only orchestration --merge,$(if $(QUICK),--quick --out bench/quick))

chaos: $(VENV)/.train ## random-kill, corruption, lock and disk-full trials on a tiny curriculum (TRIALS=8 SEED=1)
	$(BIN)/python -m chaos --trials $(or $(TRIALS),8) --seed $(or $(SEED),1)

clean:
	rm -rf cdk.out .pytest_cache
