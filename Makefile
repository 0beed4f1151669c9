# Two commands do all set-up on a fresh machine (Python >= 3.11 with venv, make):
#   make run    install into .venv and run the agent on the embedded simulated plant
#   make test   install into .venv (with test extras) and run lint, types and the whole suite
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STATE   ?= ./state

.PHONY: run test lint typecheck pytest bench install install-test clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "edge-agent needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(BIN)/edge-agent run --state-dir $(STATE)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# mypy sees the installed layout (edge_agent.agent -> agent/, ...) through a tree of symlinks,
# so imports across the namespace are checked, not silently Any.
typecheck: $(VENV)/.installed-test
	rm -rf build/typecheck && mkdir -p build/typecheck/edge_agent
	ln -s "$(CURDIR)"/edge_agent/*.py build/typecheck/edge_agent/
	for d in agent drivers models sync; do ln -s "$(CURDIR)/$$d" build/typecheck/edge_agent/$$d; done
	cd build/typecheck && "$(CURDIR)/$(BIN)/mypy" --config-file "$(CURDIR)/pyproject.toml" -p edge_agent

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(VENV)/.installed-test
	for b in tests/bench/bench_*.py; do echo "== $$b"; OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
