PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= auto

.PHONY: venv test lint typecheck demo demo-vision bench clean

$(BIN)/batchproc: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/batchproc

venv: $(BIN)/batchproc

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check processor tests bench
	$(BIN)/mypy

demo: venv
	bash sample_jobs/demo.sh $(BIN) $(PORT) sample_jobs/chat.jsonl

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf demo-out bench/out .pytest_cache .mypy_cache
