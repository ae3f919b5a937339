# Two entry points: `make run` starts the service on its embedded default, `make test` runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-capacity bench-soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	AGENT_INSECURE_WEBHOOKS=true $(BIN)/voice-agent serve --host 127.0.0.1 --port 8080

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench
	$(BIN)/mypy

test: lint
	scripts/ensure-postgres
	scripts/ensure-chromium
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/calls.py

bench-capacity: $(STAMP)
	$(BIN)/python bench/capacity.py

bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes 10 --gc-probe

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
