# Every target runs in a virtual environment of the project's own ($(VENV), made by
# scripts/setup.sh with the newest dependencies pyproject.toml allows), never in the system's
# Python: what is tested is what a user installs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test-setup demo test test-all test-lowest test-asan bench

setup:
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/demo.sh

# the default suite (about 10 minutes on 2 cores); slow cases are marked and run by test-all
# (CORAFS_REQUIRE_CEPH: the S3 tests fail rather than skip Ceph when test-setup could not
# install it)
test: test-setup
	CORAFS_REQUIRE_CEPH=1 $(PY) -m pytest -m "not slow" -q

test-all: test-setup
	CORAFS_REQUIRE_CEPH=1 $(PY) -m pytest -q

# what the tests need beyond a user's install: a headless browser for the report page, Ceph's
# radosgw for the S3 tests
test-setup:
	TEST_TOOLS=1 VENV=$(VENV) bash scripts/setup.sh

# the lowest versions pyproject.toml allows, in a second environment: the smoke tests
test-lowest:
	LOWEST=1 VENV=.venv-lowest bash scripts/setup.sh
	.venv-lowest/bin/python -m pytest -m smoke -q

# the compiled kernels built with AddressSanitizer, under their property and fuzz tests
test-asan: setup
	VENV=$(VENV) bash scripts/test-asan.sh

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done
