# Two commands do all set-up on a fresh machine (Python >= 3.11 with venv, make):
#   make run    install into .venv and run the agent on the embedded simulated plant
#   make test   install into .venv (with test extras) and run lint, types and the whole suite
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STATE   ?= ./state

.PHONY: run test lint typecheck pytest bench install install-test clean system-deps

# Debian packages the tests start for real (Mosquitto, headless Chromium, PortAudio/ALSA,
# systemd-analyze). Installed when missing and running as root (CI); otherwise named.
SYSTEM_DEPS := mosquitto:/usr/sbin/mosquitto chromium:/usr/bin/chromium \
	libportaudio2:/usr/lib/x86_64-linux-gnu/libportaudio.so.2 alsa-utils:/usr/bin/aplay \
	systemd:/usr/bin/systemd-analyze

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
# so imports across the namespace are checked, not silently Any. tests/ is checked beside it
# with the same settings (fakes are typed against the protocols they stand in for).
typecheck: $(VENV)/.installed-test
	rm -rf build/typecheck && mkdir -p build/typecheck/edge_agent
	ln -s "$(CURDIR)"/edge_agent/*.py build/typecheck/edge_agent/
	for d in agent drivers models sync; do ln -s "$(CURDIR)/$$d" build/typecheck/edge_agent/$$d; done
	ln -s "$(CURDIR)/tests" build/typecheck/tests
	cd build/typecheck && "$(CURDIR)/$(BIN)/mypy" --config-file "$(CURDIR)/pyproject.toml" \
	  -p edge_agent -p tests

pytest: $(VENV)/.installed-test system-deps
	$(BIN)/pytest

system-deps:
	@missing=""; for d in $(SYSTEM_DEPS); do p=$${d%%:*}; f=$${d#*:}; \
	  [ -e "$$f" ] || [ -e "$$(echo $$f | sed 's|x86_64-linux-gnu|aarch64-linux-gnu|')" ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "the tests need these Debian packages: sudo apt-get install -y$$missing" >&2; exit 1; fi; fi

test: system-deps lint typecheck pytest

bench: $(VENV)/.installed-test
	for b in tests/bench/bench_*.py; do echo "== $$b"; OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
