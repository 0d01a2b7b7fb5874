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

# The main job: train a tiny QuantArt on the sample images (PyTorch, CPU, a few minutes), export it to
# ONNX, then stylize every sample photo with every sample artwork through the torch-free runtime.
DEMO := outputs/demo
demo: venv
	$(BIN)/quantart demo --out $(DEMO)
	$(BIN)/quantart-export $(DEMO)/stage2/model --out $(DEMO)/onnx --precision both --force
	for s in assets/style/*.jpg; do \
	  $(BIN)/quantart stylize --model $(DEMO)/onnx --style $$s assets/content \
	    -o $(DEMO)/stylized/$$(basename $$s .jpg) --no-progress || exit $$?; \
	done
	@echo "results: $(DEMO)/grid.png (PyTorch) and $(DEMO)/stylized/<style>/ (ONNX Runtime)"

test: venv
	$(BIN)/python -m pytest -q -ra

.PHONY: venv demo test
