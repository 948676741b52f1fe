# Hearth: `make run` serves the default model, `make test` runs the suite. Both set up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
# llama-cpp-python compiles llama.cpp from source; use every core for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install models templates run cluster test screenshots check lint typecheck bench bench-speculation bench-cluster soak clean

install: $(STAMP)

# The llama-cpp-python pinned in pyproject.toml, built by scripts/llama_wheel.sh (see there why).
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)

$(STAMP): pyproject.toml scripts/llama_wheel.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	wheels=$$(scripts/llama_wheel.sh $(BIN)/python $(LLAMA_CPP_VERSION)) && \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	    --force-reinstall "$$wheels"/llama_cpp_python-*.whl && \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check \
	    --find-links "$$wheels" -e '.[test]'
	@touch $(STAMP)

models: install
	$(BIN)/hearth models pull smollm2
	$(BIN)/hearth models pull gemma3-270m

run: install
	$(BIN)/hearth models pull smollm2
	$(BIN)/hearth serve --host $(HOST) --port $(PORT)

# REPLICAS Hearth processes on PORT+1... behind the SGLang model gateway on PORT (cache-aware).
REPLICAS ?= 2
cluster: install
	$(BIN)/hearth models pull smollm2
	$(BIN)/hearth cluster --replicas $(REPLICAS) --host $(HOST) --port $(PORT)

# The chat templates of about seventy real models that llama.cpp keeps in its source (the
# pinned sdist's vendor/llama.cpp/models/templates), for tests/services/test_template_corpus.py.
# Cached outside the repo, from the same sdist download as bench/build_llama_server.sh.
BENCH_CACHE ?= $(or $(HEARTH_BENCH_CACHE),$(HOME)/.cache/hearth/bench)
LLAMA_SDIST := $(BENCH_CACHE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
TEMPLATES_DIR := $(HOME)/.cache/hearth/templates/llama-cpp-python-$(LLAMA_CPP_VERSION)

templates: $(TEMPLATES_DIR)

$(TEMPLATES_DIR): | $(STAMP)
	test -f $(LLAMA_SDIST) || $(BIN)/python -m pip download --quiet --disable-pip-version-check \
	  --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $(dir $(LLAMA_SDIST))
	rm -rf $@.part && mkdir -p $@.part
	tar xzf $(LLAMA_SDIST) -C $@.part --strip-components=5 --wildcards \
	  '*/vendor/llama.cpp/models/templates/*'
	rm -rf $@ && mv $@.part $@

test: models templates
	$(BIN)/python -m pytest

# The web page's browser tests (Debian's chromium), saving a screenshot of each view in docs/.
screenshots: models
	HEARTH_SCREENSHOTS=docs $(BIN)/python -m pytest tests/web

lint: install
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench

typecheck: install
	$(BIN)/mypy

# What CI runs (.ci/run): lint and format, types over server/, tests/ and bench/, then the tests.
check: lint typecheck test

# Benchmark, not a test: Hearth beside llama-cpp-python's server and llama.cpp's llama-server
# (built once from the llama.cpp inside the pinned llama-cpp-python sdist, cached in
# ~/.cache/hearth/bench). Appends its table to bench/RESULTS.md.
BENCH_ARGS ?= --rounds 5
SMOLLM2 = $$($(BIN)/python -c 'from server.settings import load_settings; from server.models.sources import CATALOG; print(load_settings(None).models_dir.expanduser() / CATALOG["smollm2"].filename)')
bench: models
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	bench/build_llama_server.sh $(BIN)/python > /dev/null
	$(BIN)/python bench/bench.py --model-path $(SMOLLM2) \
	  --llama-server $$(bench/build_llama_server.sh $(BIN)/python) \
	  --threads $$(nproc) --write bench/RESULTS.md $(BENCH_ARGS)
	$(BIN)/python bench/cache_bench.py --model-path $(SMOLLM2) \
	  --llama-server $$(bench/build_llama_server.sh $(BIN)/python) \
	  --threads $$(nproc) --write bench/RESULTS.md
	$(BIN)/python bench/grammar_cost.py --model-path $(SMOLLM2) --threads $$(nproc) \
	  --write bench/RESULTS.md
	$(BIN)/python bench/long_context.py --model-path $(SMOLLM2) --threads $$(nproc) \
	  --write bench/RESULTS.md
	$(MAKE) bench-speculation

# Prompt-lookup speculation: copying and free writing, speculation on and off (bench/speculation.py).
bench-speculation: models
	$(BIN)/python bench/speculation.py --model-path $(SMOLLM2) --threads $$(nproc) \
	  --write bench/RESULTS.md

# Replicas behind the SGLang model gateway: cache-aware routing against round robin.
bench-cluster: models
	$(BIN)/python bench/cluster_bench.py --model-path $(SMOLLM2) --write bench/RESULTS.md
	$(BIN)/python bench/shared_kv.py --model-path $(SMOLLM2) --write bench/RESULTS.md

# A bounded soak and fault run on loopback (SOAK_MINUTES, default 10); see bench/soak.py.
SOAK_MINUTES ?= 10
soak: models
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) --model-path $(SMOLLM2) \
	  --threads $$(nproc) --write bench/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
