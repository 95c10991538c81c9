# mamba-suite: the two set-up commands.
#   make demo  -- install into .venv if needed, then train the default tasks on their embedded data
#   make test  -- install into .venv if needed, then run the whole test suite on CPU
# The first interpreter on PATH that runs and is >= 3.11 (pyenv shims can exist but not run).
PYTHON ?= $(shell for c in python3 python3.13 python3.12 python3.11 python; do \
	$$c -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$c; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean espeak

install: $(STAMP) espeak

# The speech task's embedded corpus is synthesised with espeak-ng (a Debian package, not a Python one).
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing espeak-ng (speech demo corpus) with apt-get"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q espeak-ng >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	      $$SUDO apt-get install -y -q espeak-ng >/dev/null; } || echo "warning: apt-get could not install espeak-ng"; \
	  else \
	    echo "note: espeak-ng not found and no apt-get: install it (brew install espeak-ng, dnf install espeak-ng)" \
	         "to generate the speech demo corpus; speech tests that need it are skipped"; \
	  fi; }

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "mamba-suite needs Python >= 3.11 on PATH (python3, python3.11, ...); none found" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# The main job (selective copying), then the vision default: train Vim on digits and write its evaluation report.
demo: install
	$(BIN)/mamba-suite fit -c configs/core/selective_copying.yaml
	$(BIN)/mamba-suite fit -c configs/vision/vim_digits.yaml
	$(BIN)/mamba-suite evaluate -c configs/vision/vim_digits.yaml \
	  --ckpt_path "$$(ls -t runs/vim_digits/version_*/checkpoints/last.ckpt | head -1)" --overwrite=true

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
