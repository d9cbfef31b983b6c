# Everything a developer or CI runs. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml layers/relay/requirements.txt | sha1sum | cut -c1-12)

.DEFAULT_GOAL := help
.PHONY: help setup run test lint typecheck validate build deploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml layers/relay/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

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

test: lint typecheck validate ## lint, types, template and every test
	$(BIN)/pytest

build: $(STAMP) ## sam build for python3.13/arm64 without a container
	$(BIN)/sam build

deploy: build ## sam deploy (add ENV=prod for the prod config)
	$(BIN)/sam deploy --config-env $(or $(ENV),default)

clean: ## remove the venv and build output
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
