# The two set-up commands of the README, and the pieces they are made of.
#   make demo   set up, start the service with its embedded defaults and run a demo job
#   make test   set up, then lint, type-check and run the whole test suite
# VENV may point outside the clone (CI keeps one between runs); TORCH_PINS picks the torch build.

VENV ?= .venv
PYTHON ?= python3
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test processes of `make test` (pytest-xdist; each file runs whole in one of them). At most 3:
# each takes a band of five Redis databases (tests/conftest.py).
TEST_WORKERS ?= 2
# Run in one process after the rest: schemathesis gives every operation's test the same node id,
# and pytest-xdist, which keys tests by node id, would run one of them. (Exit code 5: the
# PYTEST_ARGS chose none of them.)
SERIAL_TESTS := tests/service/test_schemathesis.py

.PHONY: install lint typecheck unit e2e test bench demo clean

$(VENV)/.torch-installed:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	touch $@

install: $(VENV)/.torch-installed
	$(PY) -m pip install --quiet -e '.[dev]'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

test: lint typecheck
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --ignore=$(SERIAL_TESTS) $(PYTEST_ARGS)
	$(PY) -m pytest $(SERIAL_TESTS) $(PYTEST_ARGS) || [ $$? -eq 5 ]

demo: install
	$(VENV)/bin/lth demo

# Every benchmark runs even when one fails; the summary is written either way, and the target
# fails if any benchmark did.
bench: install
	@status=0; \
	for name in throughput lenet_fashion_mnist search_cost overheads concurrency deploy_sizes onnx_check load; do \
		echo "== bench.$$name"; \
		$(PY) -m bench.$$name || { echo "bench.$$name failed"; status=1; }; \
	done; \
	echo "== bench.load --auth"; \
	$(PY) -m bench.load --auth || { echo "bench.load --auth failed"; status=1; }; \
	$(PY) -m bench.summary; \
	exit $$status

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build *.egg-info
