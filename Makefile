# Two commands matter: `make run` starts the service, `make test` tests it.
# Both create .venv and install the project on first use, so each works alone on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= ./data
# MLX's backend on Linux: cpu, or cuda on hosts with NVIDIA GPUs (`make MLX_BACKEND=cuda`).
MLX_BACKEND ?= cpu
# MLX compiles fused CPU kernels with g++ on first use; tiny test models gain nothing from it.
TEST_ENV := MLX_DISABLE_COMPILE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# System programs the tests need that pip cannot bring, as program:debian-packages:homebrew
# (see tests/system_packages.sh). On macOS the page tests use the Chromium that Playwright
# downloads itself, so Homebrew brings only Redis.
TEST_PROGRAMS := 'chromium:chromium|chromium-browser:-' 'redis-server:redis-server:redis'

.PHONY: install system-packages test run cluster bench bench-model demo lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,$(MLX_BACKEND)]'
	touch $(STAMP)

# System packages first: a missing one stops `make test` at once with one line.
test: system-packages $(STAMP)
	@[ "$$(uname -s)" != Darwin ] || $(PY) -m playwright install chromium
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

system-packages:
	@sh tests/system_packages.sh $(TEST_PROGRAMS)

run: $(STAMP)
	DATA_DIR=$(DATA_DIR) $(PY) -m server

# A local Redis and three nodes (api, worker, all) on one DATA_DIR; Ctrl-C stops them all.
cluster: $(STAMP)
	$(PY) -m bench.cluster --data-dir $(DATA_DIR)-cluster

bench: $(STAMP)
	$(TEST_ENV) $(PY) -m bench --write docs/BENCHMARKS.md

# The model path at the real SmolVLM2-500M size (built offline, random weights): minutes.
# MLX's compiled kernels are left on, as in a real run.
bench-model: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		nice $(PY) -m bench.bench_model --write docs/BENCHMARKS.md

demo: $(STAMP)
	$(TEST_ENV) $(PY) -m bench.demo

# Style, layers (import-linter's contracts in setup.cfg) and types; CI runs it before the tests.
LINT_PATHS := server inference_worker protocol client tests bench

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
