PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint types pytest demo bench bench-profile bench-scale bench-workers bench-tools clean

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

# `make bench`: CPU per message of bulksend beside aiosmtplib and a bare trio loop, interleaved
# rounds, plus DKIM and micro-benchmarks (~5-10 min on 2 cores). Options go in BENCH_ARGS,
# e.g. `make bench BENCH_ARGS="--n 50000 --reps 5"` (see benchmarks/README.md).
BENCH_ARGS ?=
BENCH_PEERS := $(VENV)/.bench-peers

$(BENCH_PEERS): $(STAMP)
	$(BIN)/pip install --quiet aiosmtplib
	touch $(BENCH_PEERS)

bench: $(BENCH_PEERS)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Where bulksend's CPU per message goes, by layer (cProfile of one send, ~2 min).
bench-profile: $(STAMP)
	$(BIN)/python benchmarks/profile_layers.py $(BENCH_ARGS)

# 1M recipients over 10k domains: import seconds, peak RSS, a bounded send (~3-5 min).
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/run.py --sections scale --out benchmarks/out/scale.json $(BENCH_ARGS)

# One site: embedded SQLite vs 1/2/4 workers on PostgreSQL + Redis/Valkey (issue 17, ~2-3 min).
bench-workers: $(STAMP)
	$(BIN)/python benchmarks/workers.py $(BENCH_ARGS)

# Optional peers: Postfix's smtp-source/smtp-sink (C), for --peers smtp-source / --sinks postfix.
# The Postfix daemon is kept from starting (policy-rc.d) and left unconfigured: nothing binds port 25.
bench-tools: $(BENCH_PEERS)
	@if [ ! -x /usr/sbin/smtp-source ]; then \
		echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections; \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix; \
		status=$$?; rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
