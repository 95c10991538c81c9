# mamba-suite: the two set-up commands.
#   make demo  -- install into .venv if needed, then train the default task on its embedded data
#   make test  -- install into .venv if needed, then run the whole test suite on CPU
PYTHON ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3 || command -v python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mamba-suite needs Python >= 3.11; found " + sys.version.split()[0] + " at " + sys.executable)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(BIN)/mamba-suite fit -c configs/core/selective_copying.yaml

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
