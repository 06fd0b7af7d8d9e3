# Diff-Mix Studio: `make app` sets up and starts the app, `make test` sets up and runs the tests.
# Both create ./.venv on first use (Python 3.10+ with pip; about 6 GB with the torch wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: app test setup lint format browser-deps nano demo-judge

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

app: setup
	$(PY) app.py

# Headless Chromium for the browser tests comes from Debian's packages (no browser download).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed (apt-get install chromium); browser tests will be skipped"; fi; }

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup browser-deps
	$(PY) -m ruff check .
	$(PY) -m pytest

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Rebuild the embedded nano Stable Diffusion from scratch (about 50 min on 2 CPU cores).
nano: setup
	$(PY) -m diffmix.nano.train --out assets/nano-sd

# Refit the demo's shipped reference classifier (the Translate page's judge; ~15-25 min on a
# busy 2-core CPU; deterministic: the same bytes as assets/refclf/demo-smallcnn.safetensors).
demo-judge: setup
	$(PY) -c "from pathlib import Path; from diffmix.score import build_bundled_judge as b; print(b(Path('assets/refclf')))"
