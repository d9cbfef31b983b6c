# Everything a developer or CI runs. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml layers/relay/requirements.txt | sha1sum | cut -c1-12)
# checkov pins boto3 and packaging versions that break aws-sam-cli: it gets a venv of its own.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := $(VENV)/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

.DEFAULT_GOAL := help
.PHONY: help setup run test lint typecheck validate security reliability soak bench build deploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml layers/relay/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

BENCH_STAMP := $(VENV)/.bench-$(shell sha1sum pyproject.toml | cut -c1-12)
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	rm -f $(VENV)/.bench-* && touch $@

# After .venv exists (it holds this one): with make -j the two never race to create it.
$(CHECKOV_STAMP): | $(BIN)/python
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	rm -f $(CHECKOV_VENV)/.installed-* && touch $@

setup: $(STAMP) ## create .venv with the relay and every dev tool

run: $(STAMP) ## serve the relay on http://127.0.0.1:3000 with moto and sandbox providers
	$(BIN)/python -m relay_local

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy, strict on the layer
	$(BIN)/mypy

validate: $(STAMP) ## sam validate --lint (cfn-lint) on template.yaml
	$(BIN)/sam validate --lint --region us-east-1

security: $(STAMP) $(CHECKOV_STAMP) ## cfn-lint and checkov over template.yaml (see docs/security.md)
	$(BIN)/cfn-lint template.yaml
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV) --config-file .checkov.yaml \
		--framework cloudformation --file template.yaml --quiet --compact

test: ## lint, types, template, security scan and every test
	@# Two at a time: the two virtualenvs install side by side, mypy beside the scans.
	$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck validate security
	$(BIN)/pytest -n 2 --dist loadgroup  # two workers; the reliability tests share one

# The figures docs/reliability.md and docs/hostile-input.md quote go to docs/runs/, named by the
# commit measured: <short sha>, with -dirty when the code measured differs from it (each file's
# "dirty" says the same). Expanded when a recipe line runs; docs/runs/ is not among the paths.
RUN_ID = $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)$(shell \
	git status --porcelain -- template.yaml layers functions local ops tests docs/openapi.yaml \
	pyproject.toml Makefile \
	2>/dev/null | grep -q . && echo -dirty)

reliability: $(STAMP) ## 2,000 messages under faults, crash, hostile input: counts to docs/runs/
	$(BIN)/python -m tests.reliability.harness --messages 2000 --seed 7 \
		--json docs/runs/reliability-2000-seed7-$(RUN_ID).json
	RELAY_CRASH_REPORT=docs/runs/crash-$(RUN_ID).json \
		$(BIN)/pytest -q -s tests/reliability/test_crash_recovery.py  # prints its counts too
	RELAY_HYPOTHESIS_REPORT=docs/runs/hostile-input-seed7-$(RUN_ID).json \
		$(BIN)/pytest -q --hypothesis-seed=7 --hypothesis-show-statistics \
		tests/property tests/e2e/test_schemathesis.py  # examples and events per test

soak: $(STAMP) ## the same harness with 50,000 messages (half an hour to an hour): docs/runs/
	$(BIN)/python -m tests.reliability.harness --messages 50000 --seed 7 \
		--json docs/runs/soak-50000-seed7-$(RUN_ID).json

bench: $(BENCH_STAMP) ## benchmarks and chart for docs/performance.md (about 40 minutes)
	BENCH_PYTHON= $(BIN)/python -m benchmarks.cold_start
	@# The same on CPython 3.13 (Lambda's python3.13), found as layers/relay/Makefile finds it.
	@found=; for candidate in $(PYTHON313) python3.13 $(sort $(wildcard \
		$(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.13*/bin/python3.13 \
		$(shell pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13)); do \
		if "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; \
		then found=$$candidate; break; fi; \
	done; \
	if [ -z "$$found" ]; then echo "bench: no CPython 3.13 (set PYTHON313=...): NOT refreshed:" \
		"benchmarks/results/cold_start-py313.json (its meta.commit says which run it is)" >&2; \
	else set -x; $(BIN)/python -m benchmarks.cold_start --python "$$found" \
		--out benchmarks/results/cold_start-py313.json; fi
	$(BIN)/python -m benchmarks.warm --rounds 9  # 3 rounds moved the webhook by 0.26x between runs
	$(BIN)/python -m benchmarks.batch --reps 7  # 7: the 10-message, 200 ms cell sits near its target
	$(BIN)/python -m benchmarks.batch --patterns relay,bare --sizes 10,100 --dynamodb-ms 5 \
		--out benchmarks/results/batch-dynamodb-5ms.json  # the same cells without moto's lock
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.build
	$(BIN)/python -m benchmarks.chart

build: $(STAMP) ## sam build for python3.13/arm64 without a container (bytecode required)
	LAYER_BYTECODE=required $(BIN)/sam build
	@# sam build's cache is keyed on the layer's files, not on LAYER_BYTECODE: check the result.
	@ls .aws-sam/build/RelayLayer/python/relay/__pycache__/*.cpython-313.pyc >/dev/null 2>&1 \
		|| { echo "the built layer has no python3.13 bytecode (a cached bare sam build?): rm -rf .aws-sam, then make build" >&2; exit 1; }
	@# ... nor on the handlers: a cached layer pruned for older handlers must still hold all they import.
	$(BIN)/python layers/relay/prune.py --check .aws-sam/build/RelayLayer/python layers/relay/relay functions/*/app.py \
		|| { echo "the built layer lacks Powertools modules the handlers import: rm -rf .aws-sam, then make build" >&2; exit 1; }

deploy: build ## sam deploy (add ENV=prod for the prod config)
	$(BIN)/sam deploy --config-env $(or $(ENV),default)

clean: ## remove the venv and build output
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
