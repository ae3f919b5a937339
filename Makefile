# Two entry points: `make run` starts the service on its embedded default, `make test` runs every check.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint audit image-test bench bench-capacity bench-soak clean

# requirements.lock pins every package (scripts/lock-requirements regenerates it after a pyproject.toml change).
$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	AGENT_INSECURE_WEBHOOKS=true $(BIN)/voice-agent serve --host 127.0.0.1 --port 8080

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench scripts/audit.py
	$(BIN)/ruff format --check agent tests bench scripts/audit.py
	$(BIN)/mypy

# Known vulnerabilities in the locked set (pip-audit; see scripts/audit.py for what happens without its services).
audit: $(STAMP)
	$(BIN)/python scripts/audit.py requirements.lock

test: lint audit
	scripts/ensure-postgres
	scripts/ensure-chromium
	scripts/ensure-podman >/dev/null || [ $$? -eq 3 ]  # 3: no podman possible here; the image tests then skip
	$(BIN)/pytest -q

# The container image alone: build it, run it, place a call, drain it (tests/test_container_image.py).
image-test: $(STAMP)
	scripts/ensure-podman >/dev/null
	$(BIN)/pytest -q -m container

bench: $(STAMP)
	$(BIN)/python bench/calls.py

bench-capacity: $(STAMP)
	$(BIN)/python bench/capacity.py

bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes 10 --gc-probe

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
