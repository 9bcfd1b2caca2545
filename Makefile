# Wharf developer entry points.  Each target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck shape unit bench clean

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

bench: $(STAMP)
	$(BIN)/python -m benchmarks throughput

clean:
	rm -rf $(VENV) .typecheck build dist *.egg-info
