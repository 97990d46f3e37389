# sweeplab: `make sweep` runs the default sweep, `make test` runs every test tier this machine can.
# Each target creates .venv first when it is missing (plain pip + venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision first, pinned to the builds this project is tested with; override for other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# the versions CI passed with; empty to resolve afresh within pyproject.toml's ranges
CONSTRAINTS ?= -c constraints.txt
PYTEST_ARGS ?=

.PHONY: venv sweep train lint test test-fast system-deps services clean bench bench-smoke bench-deps gpu-wheels

venv: $(VENV)/.installed

# The last step makes the empty MLflow store every new local store is copied from (sweeplab.tracking.store), so
# that not even the first sweep waits for MLflow's migrations.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]' $(CONSTRAINTS)
	$(BIN)/python -c 'from sweeplab.tracking.store import prepare_store_template; prepare_store_template()'
	touch $@

sweep: venv
	$(BIN)/sweeplab sweep default

train: venv
	$(BIN)/sweeplab train model=lenet

# Debian's chromium (browser tier) and docker-compose (compose file validation). Where they cannot be
# installed (no root, no apt) their tests are skipped with the reason; in CI (CI=true) they fail.
system-deps:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from apt"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/tmp/sweeplab-apt.log 2>&1 \
	  || echo "could not install$$missing (see /tmp/sweeplab-apt.log): their tests will be skipped"; fi

# PostgreSQL for the cluster tier: started when installed but not running.
services:
	@if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true; fi

# ruff, the import-layering contracts (pyproject.toml [tool.importlinter]) and mypy on src/
lint: venv
	@status=0; $(BIN)/ruff check src tests benchmarks || status=1; $(BIN)/lint-imports || status=1; \
	$(BIN)/mypy || status=1; exit $$status

# Three pytest-xdist workers on 2 cores (a worker waiting on a server or on a sweep's start-up leaves a core idle;
# docs/benchmarks.md), each file's tests on one of them (--dist loadfile), so a module's fixtures (sweeps, servers)
# are set up once; tests/conftest.py spreads the benchmark smoke tests and starts the longest files first.
# TEST_WORKERS=0: one after another. Lint runs beside the tests (mypy from a fresh clone: half a minute on one
# core), its output after theirs; either failing fails the target.
TEST_WORKERS ?= 3
test: venv system-deps services bench-deps
	@$(MAKE) --no-print-directory lint > .lint.log 2>&1 & lint=$$!; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); status=$$?; \
	wait $$lint || { echo "make lint failed:"; status=1; }; cat .lint.log; rm -f .lint.log; exit $$status

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not cluster and not browser" $(PYTEST_ARGS)

# Issue 7's benchmarks side by side (docs/performance.md, which says how long they take): `make bench` at full
# size (run it on a quiet machine), `make bench-smoke` at tiny sizes; BENCH=B2 runs one of them.
# Results: benchmarks/results/<UTC time>-<size>.jsonl and .md.
BENCH ?=
# Hydra's plugins for B2's comparison. hydra-optuna-sweeper 1.3.0 (the latest) declares optuna<3, so pip
# cannot install it beside optuna 5: it goes into benchmarks/.vendor with --no-deps, used by B2 alone.
HYDRA_PLUGINS := hydra-optuna-sweeper==1.3.0 hydra-joblib-launcher==1.2.0

bench-deps: venv
	test -d benchmarks/.vendor/hydra_plugins || $(BIN)/pip install --quiet --no-deps --target benchmarks/.vendor $(HYDRA_PLUGINS)

# What benchmarks/gpu_device.sh needs on the lent GPU machine beside its image's torch: pure-Python wheels, carried.
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 mlxtend==0.25.0

gpu-wheels: venv
	test -d benchmarks/.gpu-wheels || $(BIN)/pip wheel --quiet --no-deps -w benchmarks/.gpu-wheels $(GPU_WHEELS)

bench: venv bench-deps
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/run.py $(BENCH)

bench-smoke: venv bench-deps
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/run.py --smoke $(BENCH)

clean:
	rm -rf outputs .pytest_cache
