# Two commands do all set-up from a fresh clone: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := cpu,kernels,train,export,bench,serve,test
# CPU torch 2.13.0 lies on this machine's disk; a looser pin would pull a multi-GB CUDA build.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(FIND_LINKS) -e ".[$(EXTRAS)]"
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/quantart demo --out outputs/demo

test: venv
	$(BIN)/python -m pytest -q -ra

.PHONY: venv demo test
