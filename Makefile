# The two commands a newcomer needs: `make demo` and `make test`. Each makes its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean dashboards

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spendwatch demo

test: $(STAMP) test-servers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# Debian's postgresql, prometheus and prometheus-alertmanager, which the tests start on 127.0.0.1 (installed as root;
# no apt call when they are present).
.PHONY: test-servers
test-servers:
	sh scripts/install-test-servers.sh

# Regenerate dashboards/*.json from dashboards/*.dashboard.py (tests fail when the committed JSON drifts).
dashboards: $(STAMP)
	$(BIN)/python -m dashboards.generate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The benchmark gets its own virtualenv: the peers it compares against must not leak into the test environment.
# openai-v2 2.4b0 imports httpx (openai 3.x no longer ships it) and a module that opentelemetry-util-genai 1.2b0
# renamed, hence the two extra pins. OpenLIT is left out: it requires openai<3. BENCH_ARGS=--quick for a short run.
BENCH_VENV ?= .bench-venv
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_PEERS ?= opentelemetry-instrumentation-openai-v2 opentelemetry-util-genai==1.1b0 httpx \
	opentelemetry-instrumentation-openai
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install --quiet --upgrade pip
	$(BENCH_BIN)/pip install --quiet -e '.[test]'
	$(BENCH_BIN)/pip install --quiet $(BENCH_PEERS) || echo "bench: some peers did not install; they will show as not available"
	touch $@

# Instrumentation overhead against the bare call and the peers, then ledger ingest and /metrics scrape cost.
bench: $(BENCH_STAMP)
	$(BENCH_BIN)/python -m bench $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.ledger $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.scrape $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.guard $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
