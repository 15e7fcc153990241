# sslvitals developer targets. `make demo` and `make test` are the two commands of the README.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-unit test-e2e bench clean-venv help

help:
	@echo "make install    build .venv (CPU torch 2.13, fairseq-fixed, ESPnet, FAISS); idempotent"
	@echo "make demo       install, then the main job: synthetic corpus -> tiny HuBERT via fairseq-hydra-train -> metrics table + plot"
	@echo "make test       install, then the whole test suite (unit + end-to-end through the real CLIs)"
	@echo "make test-unit  the quick unit tests only (no training runs)"
	@echo "make bench      the core benchmarks (writes benchmarks/*.md)"

install:
	@bash scripts/install.sh

demo: install
	$(VENV)/bin/sslvitals demo

test: install
	@bash scripts/run_tests.sh

test-unit:
	@bash scripts/run_tests.sh -m "not e2e"

test-e2e: install
	@bash scripts/run_tests.sh -m e2e

bench: install
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_capture.py

clean-venv:
	rm -rf $(VENV)
