# Two commands: `make demo` and `make test`. Both create .venv when it is missing, installing the
# CPU build of torch 2.13.0 first (an unpinned torch would pull a multi-GB CUDA build), then the
# project with the extras the target needs. Re-running is cheap: stamps skip what is done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint fetch clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	touch $@

$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e '.[hf,dev,serve,onnx,faiss]'
	touch $@

demo: $(VENV)/.demo
	BF=$(BIN)/bertforge examples/demo.sh

fetch: $(VENV)/.demo
	$(BIN)/bertforge fetch --all

test: $(VENV)/.test
	$(BIN)/bertforge fetch --all >/dev/null
	$(BIN)/python -m pytest

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
