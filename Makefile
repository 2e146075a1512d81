# Quick start: `make demo` and `make test`. Both create .venv and install the package into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/flowgmm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/flowgmm

install: $(BIN)/flowgmm

demo: install
	$(BIN)/flowgmm demo -o flowgmm-demo

# pytest exits 5 when it collects no test (e.g. a filtered run): report it instead of failing CI.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal flowgmm_cli extractors tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: install
	$(BIN)/python bench/train_speed.py

clean:
	rm -rf $(VENV) flowgmm-demo *.egg-info
