# Two commands do all set-up from a fresh clone: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := cpu,int8,kernels,train,export,bench,serve,test
# CPU torch 2.13.0 lies on this machine's disk; a looser pin would pull a multi-GB CUDA build.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(FIND_LINKS) -e ".[$(EXTRAS)]"
	$(BIN)/pip check
	touch $@

venv: $(BIN)/.installed

# The main job: export the shipped demo model (assets/demo_model, trained by `quantart train` with
# configs/demo_*.yaml; the commands are in assets/demo_model/TRAINING.md) to ONNX, stylize every sample
# photo with every sample artwork through the torch-free runtime, print the per-pair metrics table and
# write the grids. `quantart demo --from-scratch` trains the model first (a long CPU job).
DEMO := outputs/demo
demo: venv
	$(BIN)/quantart demo --out $(DEMO)

# Lint (pyflakes, pycodestyle, import order, bugbear; config in pyproject.toml) before any test runs.
lint: venv
	$(BIN)/ruff check .

# The page test (tests/test_web_page.py) drives Debian's chromium + chromedriver: installed here with
# apt-get when missing; where that cannot be done, that test is skipped with the reason.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "no apt-get: the browser test will be skipped"; \
	else sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  { $$sudo apt-get update -qq && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "could not install chromium: the browser test will be skipped"; fi

# CI's command: lint, then the whole suite on two pytest-xdist workers, each module whole in one worker
# (`--dist loadfile`: its module fixtures are built once); budget 15 minutes on 2 cores.
PYTEST := $(BIN)/python -m pytest -q -ra -n 2 --dist loadfile
test: venv lint browser
	$(PYTEST)

# The edit loop: lint, then everything but the `slow` tests (full-size official architecture,
# multi-process training, the benchmark run, the Ray and browser modules: see tests/conftest.py);
# budget 3 minutes on 2 cores. No browser needed: the page test is in the slow lane.
test-fast: venv lint
	$(PYTEST) -m "not slow"

.PHONY: venv demo lint browser test test-fast
