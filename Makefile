# The two commands of the contract: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
OPENAI_WHISPER := openai-whisper==20250625
AUDIO ?= samples/sample.wav
MODEL ?= tiny.en
BACKEND ?=
ARGS ?=

.PHONY: install install-reference install-test run test test-all lint bench demo serve clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# the default path: MAX only, no torch
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@
install: $(VENV)/.installed

# + the PyTorch reference (openai-whisper without its CUDA-pulling requirements)
$(VENV)/.installed-reference: $(VENV)/.installed
	$(PIP) install -e '.[reference]'
	$(PIP) install --no-deps $(OPENAI_WHISPER)
	touch $@
install-reference: $(VENV)/.installed-reference

# + everything the tests, the benchmark, the server and the demo use
$(VENV)/.installed-test: $(VENV)/.installed-reference
	$(PIP) install -e '.[base,reference,serve,bench,vad,cluster,test]'
	touch $@
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/max-whisper transcribe $(AUDIO) --model $(MODEL) $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

# `slow` tests (the float64-blocks encoder: one more graph to compile, minutes) run with test-all
test: install-test lint
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: install-test lint
	$(PY) -m pytest $(ARGS)

# ruff (pyproject.toml): a lint or format finding fails `make test`
lint: install-test
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

bench: install-test
	$(VENV)/bin/max-whisper bench --audio ../shared/audio --json bench/results/latest.json --chart bench/results/latest.png $(ARGS)

# the other modes of the same command (bench/README.md): stage times, encoder compile, peak RSS of a long file
.PHONY: bench-stages bench-compile bench-memory
bench-stages bench-compile bench-memory: bench-%: install-test
	$(VENV)/bin/max-whisper bench --mode $* $(ARGS)

demo: install-test
	$(VENV)/bin/max-whisper demo $(ARGS)

serve: install-test
	$(VENV)/bin/max-whisper serve $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
