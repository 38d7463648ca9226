# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: setup demo test lint bench browser app clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to the CPU wheel here: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,eval,video,app]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/conceptattention generate --overwrite --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

browser:
	bash scripts/install_browser.sh   # Debian's chromium, for the app's browser test (root; CI runs it)

app: $(STAMP)
	$(BIN)/conceptattention app

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py --preset tiny

clean:
	rm -rf $(VENV) outputs .pytest_cache
