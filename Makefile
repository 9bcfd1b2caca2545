# Wharf developer entry points.  Each target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start the broker on its defaults (native 5680, HTTP 8680, data in ./data).
serve: $(STAMP)
	$(BIN)/wharf serve

## Lint, type-check and run the whole test suite.
test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check client broker protocol tests benchmarks
	$(BIN)/ruff format --check client broker protocol tests benchmarks

# mypy cannot follow setuptools' package-dir mapping, so give it the installed shape:
# .typecheck/wharf holds links to client/*, broker/ and protocol/.
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/wharf
	for f in client/*; do ln -s ../../$$f .typecheck/wharf/; done
	ln -s ../../broker .typecheck/wharf/broker
	ln -s ../../protocol .typecheck/wharf/protocol
	cd .typecheck && ../$(BIN)/mypy --strict -p wharf

bench: $(STAMP)
	$(BIN)/python -m benchmarks throughput

clean:
	rm -rf $(VENV) .typecheck build dist *.egg-info
