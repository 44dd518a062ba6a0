# The two commands a newcomer needs: `make demo` and `make test`. Each makes its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-against clean dashboards alert-rules

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spendwatch demo

# Every step runs even when one before it failed, so one failure never hides the others' results; the target fails
# at the end, naming the steps that failed.
test: $(STAMP) test-servers
	@failed=""; \
	$(BIN)/ruff check . || failed="$$failed ruff-check"; \
	$(BIN)/ruff format --check . || failed="$$failed ruff-format"; \
	$(BIN)/python -m pytest || failed="$$failed pytest"; \
	$(MAKE) test-openai-compat || failed="$$failed test-openai-compat"; \
	$(MAKE) test-aioboto3 || failed="$$failed test-aioboto3"; \
	if [ -n "$$failed" ]; then echo "make test: failed:$$failed"; exit 1; fi; \
	echo "make test: every step passed"

# The inner loop: ruff and every test but the slow ones (benchmarks, valgrind, multi-process races, real deployments:
# `pytest -m slow` runs those alone), each step run as in `make test`, which runs them all.
.PHONY: test-fast
test-fast: $(STAMP) test-servers
	@failed=""; \
	$(BIN)/ruff check . || failed="$$failed ruff-check"; \
	$(BIN)/ruff format --check . || failed="$$failed ruff-format"; \
	$(BIN)/python -m pytest -m "not slow" -n 2 || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "make test-fast: failed:$$failed"; exit 1; fi; \
	echo "make test-fast: every step passed"

# The instrumentation's tests again on the older openai lines it supports (1.x and 2.x use httpx, 3.x httpx2).
COMPAT_TESTS := tests/test_openai_instrumentation.py tests/test_openai_edges.py \
	tests/test_cassette_replay_instrumented.py tests/test_failed_calls.py \
	tests/test_openai_media.py tests/test_openai_retries.py tests/test_openai_background.py
COMPAT_DEPS := opentelemetry-sdk opentelemetry-distro pytest pytest-asyncio pyyaml 'psycopg[binary]'
.PHONY: test-openai-compat
test-openai-compat:
	@failed=""; \
	for line in 1 2; do \
		venv=.venv-openai$$line; \
		if [ ! -f $$venv/.installed ]; then \
			$(PYTHON) -m venv $$venv && $$venv/bin/pip install --quiet -e . $(COMPAT_DEPS) "openai>=$$line,<$$((line + 1))" \
			&& touch $$venv/.installed || exit 1; \
		fi; \
		echo "openai $$($$venv/bin/python -c 'import openai; print(openai.__version__)'):"; \
		$$venv/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS) || failed="$$failed openai$$line"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-openai-compat: failed on$$failed"; exit 1; fi

# LightRAG's Bedrock binding through aioboto3, in a virtualenv of its own: every aioboto3 pins an aiobotocore that pins
# an older botocore (and wrapt 1.x) than the test extra's (aioboto3 15.5.0: aiobotocore 2.25.1, botocore < 1.40.62);
# pip picks the boto3 to match. SPENDWATCH_TEST_AIOBOTO3=1 makes a missing aioboto3 an error there, never a skip.
AIOBOTO3_VENV := .venv-aioboto3
AIOBOTO3_TESTS := tests/test_lightrag_bindings_bedrock.py
$(AIOBOTO3_VENV)/.installed: pyproject.toml
	rm -rf $(AIOBOTO3_VENV)
	$(PYTHON) -m venv $(AIOBOTO3_VENV)
	$(AIOBOTO3_VENV)/bin/pip install --quiet --upgrade pip
	$(AIOBOTO3_VENV)/bin/pip install --quiet -e '.[test]' aioboto3==15.5.0
	touch $@

.PHONY: test-aioboto3
test-aioboto3: $(AIOBOTO3_VENV)/.installed
	SPENDWATCH_TEST_AIOBOTO3=1 $(AIOBOTO3_VENV)/bin/python -m pytest -q -p no:cacheprovider $(AIOBOTO3_TESTS)

# Debian's postgresql, prometheus and prometheus-alertmanager, which the tests start on 127.0.0.1 (installed as root;
# no apt call when they are present).
.PHONY: test-servers
test-servers:
	sh scripts/install-test-servers.sh

# Regenerate dashboards/*.json from dashboards/*.dashboard.py (tests fail when the committed JSON drifts).
dashboards: $(STAMP)
	$(BIN)/python -m dashboards.generate

# Regenerate alert_rules/spendwatch.{rules,alerts}.yml from alert_rules/{recording,alerts}.py (tests fail on drift).
alert-rules: $(STAMP)
	$(BIN)/python -m alert_rules.generate

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
	opentelemetry-instrumentation-openai \
	opentelemetry-instrumentation-google-genai opentelemetry-instrumentation-google-generativeai
# The Anthropic peer (bench.anthropic_sdk). OpenLIT is left out there too: it requires anthropic<1.
BENCH_PEERS += opentelemetry-instrumentation-anthropic
# The Bedrock peers (bench.bedrock): contrib's botocore instrumentation (its Bedrock extension) and OpenLLMetry's.
BENCH_PEERS += opentelemetry-instrumentation-botocore opentelemetry-instrumentation-bedrock
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install --quiet --upgrade pip
	$(BENCH_BIN)/pip install --quiet -e '.[test]'
	$(BENCH_BIN)/pip install --quiet $(BENCH_PEERS) \
		|| echo "bench: some peers did not install; they will show as not available"
	touch $@

# Instrumentation overhead against the bare call and the peers, ledger ingest, /metrics scrape and guard cost, start-up
# cost, then the instrumentation's instructions per call under valgrind (installed with the test servers, as root).
bench: $(BENCH_STAMP) test-servers
	$(BENCH_BIN)/python -m bench $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.ledger $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.scrape $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.api $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.guard $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.startup $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.instructions $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.anthropic_sdk $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.google_genai $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.bedrock $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.intake $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.intake --instructions
	$(BENCH_BIN)/python -m bench.span_ingest $(BENCH_ARGS)

# The working tree against spendwatch at a git revision, in one run (bench/baseline.py): make bench-against REV=main
REV ?= HEAD
bench-against: $(BENCH_STAMP) test-servers
	$(BENCH_BIN)/python -m bench --against $(REV) $(BENCH_ARGS)
	$(BENCH_BIN)/python -m bench.instructions --variants spendwatch --against $(REV) $(BENCH_ARGS)

# The fault-injection soak (issue 20, tests/faults/): seeded rounds of kill -9, full and read-only disks, PostgreSQL
# restarts and a full PostgreSQL disk, clocks off and stepping across midnight, the guard, tampering; it prints the
# figures table and names the seed of any round that broke a promise. Needs root (tmpfs mounts) and postgresql.
# make soak ROUNDS=200 [SEED=n] [KINDS=kill,pg-restart] [AGAINST=<git rev>: spendwatch as committed there]
ROUNDS ?= 50
.PHONY: soak
soak: $(STAMP) test-servers
	$(BIN)/python -m tests.faults --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED)) $(if $(KINDS),--kinds $(KINDS)) \
		$(if $(AGAINST),--against $(AGAINST))

clean:
	rm -rf $(VENV) build *.egg-info
