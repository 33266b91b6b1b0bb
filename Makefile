PY ?= python3

.PHONY: setup demo test test-all bench

setup:
	bash scripts/setup.sh

demo: setup
	bash examples/demo.sh

# the default suite (about 10 minutes on 2 cores); slow cases are marked and run by test-all
test: setup
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
