# Wharf developer entry points.  Each target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test screenshots lint typecheck shape unit bench fuzz fuzz-merge clean node-deps amqplib-suite amqp-recordings chromium client-suites

# The Node client (amqplib, from npm) that tests/integration/amqp/test_amqp_node.py runs:
# installed from the committed package-lock.json.  A machine without npm gets Debian's
# nodejs and npm (as .ci/run installs make).
NODE_DIR := tests/integration/amqp/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start the broker on its defaults (native 5680, HTTP 8680, data in ./data).
serve: $(STAMP)
	$(BIN)/wharf serve

## Lint, type-check and run the whole test suite.
test: lint typecheck $(NODE_STAMP) chromium
	$(BIN)/pytest -q -p no:cacheprovider

## The web UI's screenshots in docs/ui/ (linked from the README), rewritten by its browser
## tests; a plain test run writes them to its tmp dir and leaves the tree clean.
screenshots: $(STAMP) chromium
	WHARF_UI_SCREENSHOTS=1 $(BIN)/pytest -q -p no:cacheprovider tests/ui -k renders_real_data

## The browser tests (tests/ui/) drive Debian's chromium, never a browser Playwright
## downloads: install it with apt when it is missing and we are root (CI is).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
		else \
			echo "$(CHROMIUM) is missing: sudo apt-get install chromium (tests/ui/ are skipped without it)"; \
		fi; \
	fi

## Style, format, and the import contracts of pyproject.toml ([tool.importlinter]).
lint: shape
	$(BIN)/ruff check client broker protocol tests benchmarks
	$(BIN)/ruff format --check client broker protocol tests benchmarks
	cd .typecheck && ../$(BIN)/lint-imports --no-cache ../pyproject.toml

typecheck: shape
	cd .typecheck && ../$(BIN)/mypy --strict -p wharf -p benchmarks.perf

# mypy and import-linter cannot follow setuptools' package-dir mapping, so give them the
# installed shape: .typecheck/wharf holds links to client/*, broker/ and protocol/, and
# .typecheck/benchmarks links benchmarks/ (its perf/ load generators are type-checked too).
shape: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/wharf
	for f in client/*; do ln -s ../../$$f .typecheck/wharf/; done
	ln -s ../../broker .typecheck/wharf/broker
	ln -s ../../protocol .typecheck/wharf/protocol
	ln -s ../benchmarks .typecheck/benchmarks

## amqplib from npm for the Node client tests (npm ci, exact versions from the lock file).
node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	command -v npm >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >/dev/null
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

## amqplib's own test suite against a Wharf started for it, and against RabbitMQ on
## 127.0.0.1:5672 if one answers there (not part of `make test`; tests/README.md).
amqplib-suite: $(STAMP)
	$(BIN)/python $(NODE_DIR)/amqplib_suite.py $(AMQPLIB_SUITE_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks throughput

## pika's, aio-pika's and aiormq's own integration suites against Wharf's AMQP listener and
## against the RabbitMQ on 127.0.0.1:5672 (not part of `make test`; 30-40 min; sources and a
## scratch venv in /tmp/amqpsuites; benchmarks/client_suites.py says how).
CLIENT_SUITES_ARGS ?=
client-suites: $(STAMP)
	nice -n 10 $(BIN)/python -m benchmarks.client_suites $(CLIENT_SUITES_ARGS)

## Coverage-guided fuzzing with atheris, one target after another (not part of `make test`;
## tests/README.md).  Each target runs FUZZ_RUNS executions from its committed corpus
## (tests/fuzz/corpus/<target>); new inputs and crashes go to build/fuzz/<target>/.
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS ?= frames batches config http_bodies
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,fuzz]'
	for t in $(FUZZ_TARGETS); do \
		nice -n 10 $(BIN)/python tests/fuzz/run.py $$t -runs=$(FUZZ_RUNS) || exit 1; \
	done

## Minimise each committed corpus with what `make fuzz` found (libFuzzer -merge=1).
fuzz-merge: $(STAMP)
	for t in $(FUZZ_TARGETS); do nice -n 10 $(BIN)/python tests/fuzz/run.py $$t --merge || exit 1; done

## Record the differential AMQP scenarios (tests/integration/amqp/differential/) against
## RabbitMQ 3.10: RABBITMQ_START installs/starts it on 127.0.0.1:RABBITMQ_PORT (idempotent),
## then every scenario runs against it and recordings/rabbitmq-3.10.json is rewritten.
RABBITMQ_START ?= ../shared/anchors/start_rabbitmq.sh
RABBITMQ_PORT ?= 5672
amqp-recordings: $(STAMP)
	@test -f "$(RABBITMQ_START)" || { echo "amqp-recordings: no $(RABBITMQ_START);" \
		"set RABBITMQ_START=/path/to/start_rabbitmq.sh" >&2; exit 2; }
	bash "$(RABBITMQ_START)"
	nice -n 10 $(BIN)/python -m tests.integration.amqp.differential.record --port $(RABBITMQ_PORT)

clean:
	rm -rf $(VENV) .typecheck build dist *.egg-info $(NODE_DIR)/node_modules
