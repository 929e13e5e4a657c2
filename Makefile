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

# -n auto: one pytest worker per core (xdist); much of the suite waits on subprocesses
# and loopback servers, so two workers on two cores finish far sooner than one.
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set: else each of the suite's
# hundreds of CLI subprocesses compiles processor/ again, and pytest rewrites every test.
test: venv
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n auto

lint: venv
	$(BIN)/ruff check processor tests bench
	$(BIN)/mypy

demo: venv
	bash sample_jobs/demo.sh $(BIN) $(PORT) sample_jobs/chat.jsonl

demo-vision: venv
	$(BIN)/batchproc estimate sample_jobs/vision.jsonl --rpm 500 --tpm 30000 --offline
	bash sample_jobs/demo.sh $(BIN) $(PORT) sample_jobs/vision.jsonl
	$(BIN)/batchproc export demo-out/vision.results.jsonl --input sample_jobs/vision.jsonl

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf demo-out bench/out .pytest_cache .mypy_cache
