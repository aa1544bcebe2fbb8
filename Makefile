# bitnode — see README.md. Everything installs into .venv; nothing is needed beforehand but python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2
LOCALNET ?= .localnet

.PHONY: all venv run stop test test-fast test-system lint docs bench bench-quick bench-relay fuzz sim clean

all: test

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

## make run: install, start a local network (identity server, suppliers, a customer), print where the API is.
run: $(STAMP)
	@$(VENV)/bin/bitnode localnet up --detach --dir $(LOCALNET)
	@echo "Stop it:  make stop"

stop: $(STAMP)
	@$(VENV)/bin/bitnode localnet down --dir $(LOCALNET)

lint: $(STAMP)
	$(VENV)/bin/ruff check automats bitnode tests scripts twisted

## make test: lint, then every test (unit, in-process network, system); ends with "N passed, N failed".
test: $(STAMP) lint
	$(PY) scripts/run_tests.py -j$(JOBS) tests

## make test-fast: everything but the slow system tests.
# Test packages (folders with an __init__.py, so never __pycache__) and top-level test modules, minus tests/system.
FAST_TESTS = $(shell $(PYTHON) -c 'import pathlib; t = pathlib.Path("tests"); print(*sorted({"tests." + (p.parent.name if p.name == "__init__.py" else p.stem) for p in [*t.glob("*/__init__.py"), *t.glob("test_*.py")]} - {"tests.system"}))')
test-fast: $(STAMP)
	$(PY) scripts/run_tests.py -j$(JOBS) $(FAST_TESTS)

## make test-system: only the slow system tests (real processes through the public API).
test-system: $(STAMP)
	$(PY) scripts/run_tests.py -j$(JOBS) tests.system

docs: $(STAMP)
	$(PY) scripts/gen_docs.py
	$(PY) scripts/architecture.py

## make bench: every target of the performance issue with a PASS/FAIL line: REST and WebSocket API, 16 MiB /
## 512 MiB / 2 GiB up and down a localnet (5 suppliers + a spare, 3-of-5), CPU ms/MiB per process, small files,
## a rebuild, and the catalog / simulation parts when present (about 10 minutes); BENCH_ARGS="--profile DIR" etc.
bench: $(STAMP)
	$(PY) scripts/bench.py $(BENCH_ARGS)

## make bench-quick: the same with small sizes and counts (about a minute): a smoke test of every figure
bench-quick: $(STAMP)
	$(PY) scripts/bench.py --quick $(BENCH_ARGS)

## make sim: internet scale by simulation (10,000-node DHT under churn, one process, simulated clock);
## writes docs/sim/ and the sim section of docs/performance.md. SIM_ARGS="--quick" / "--nodes 2000 --hours 2" etc.
sim: $(STAMP)
	$(PY) scripts/sim.py $(SIM_ARGS)

## make bench-relay: an upload and a download through a router against the direct path, in one run (issue 16);
## BENCH_ARGS="--size 64MB --rounds 3 --route-bandwidth 0" etc.
bench-relay: $(STAMP)
	$(PY) scripts/bench_relay.py $(BENCH_ARGS)

## make fuzz: schemathesis against a real node (a throwaway localnet), driven by its own GET /openapi.json;
## fails on any 5xx. FUZZ_ARGS="--max-examples 100 --seed N --keep" etc.; a bounded run is in make test.
fuzz: $(STAMP)
	$(PY) scripts/fuzz.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info
