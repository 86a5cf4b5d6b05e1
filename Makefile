# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check bench demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the service when Dimmy credentials are configured, else the offline demo
run: $(STAMP)
	@if $(BIN)/dimmy-webhooks config --check-credentials; then \
		exec $(BIN)/dimmy-webhooks serve; \
	else \
		echo "No DIMMY_WEBHOOK_SECRET / DIMMY_API_KEY configured: starting the offline demo."; \
		exec $(BIN)/dimmy-webhooks demo; \
	fi

## test: lint, type-check and the whole test suite
test: $(STAMP) lint typecheck
	$(BIN)/pytest -n 2 --dist loadfile -m "not timing"
	$(BIN)/pytest -m timing

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

demo: $(STAMP)
	$(BIN)/dimmy-webhooks demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
