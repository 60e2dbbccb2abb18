PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint types pytest demo bench bench-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bulksend tests benchmarks
	$(BIN)/ruff format --check bulksend tests benchmarks

types: $(STAMP)
	$(BIN)/mypy --strict bulksend

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint types pytest

demo: $(STAMP)
	$(BIN)/bulksend demo

# `make bench`: throughput, CPU and memory of bulksend next to its peers, in one run.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Benchmark-only tools: Postfix's smtp-source/smtp-sink (C peers) and aiosmtplib.
# The Postfix daemon is kept from starting (policy-rc.d) and left unconfigured: nothing binds port 25.
bench-tools: $(STAMP)
	@if [ ! -x /usr/sbin/smtp-source ]; then \
		echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections; \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix; \
		status=$$?; rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi
	$(BIN)/pip install --quiet aiosmtplib

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
