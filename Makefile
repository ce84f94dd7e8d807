# recstream: humans and CI run the same targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[train,test]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install recstream with training and test extras

demo: $(STAMP) ## Train a small model and run the whole pipeline on the embedded broker
	$(VENV)/bin/recstream demo

test: lint ## Lint, then the whole test-suite (unit, integration on a real Kafka protocol, e2e)
	$(PY) -m pytest -q

test-unit: $(STAMP) ## Unit tests only (no broker)
	$(PY) -m pytest -q -m "not integration and not e2e"

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check streams models deploy tests
	$(VENV)/bin/mypy

clean: ## Remove the venv, demo output and caches
	rm -rf $(VENV) .demo var .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install demo test test-unit lint clean
