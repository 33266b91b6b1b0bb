#!/usr/bin/env bash
# Sets up corafs on a fresh Debian machine: the system packages FUSE needs (as root, with
# apt), then a virtual environment of its own (.venv, or $VENV) that does not see the system's
# site-packages, holding the newest versions of every dependency that pyproject.toml allows.
# That is what a user installs, so it is what the demo and the tests run on.
#
#   LOWEST=1   install the lowest versions pyproject.toml allows instead (its lower bounds,
#              as a constraints file): the CI leg that proves those bounds
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# gcc builds corafs's compiled kernels (and pyfuse3), which link libzstd (libzstd-dev);
# libfuse3-dev and pkg-config pyfuse3;
# TEST_TOOLS=1 (make test) adds the headless browser the report tests open the page in, and
# Ceph's radosgw with the monitor and OSD it needs (the second real S3 implementation the S3
# tests start on loopback; about 60 MB, without recommended packages)
APT_PACKAGES="fuse3 libfuse3-dev pkg-config rsync sqlite3 gcc libzstd-dev"
CEPH_PACKAGES=""
if [ "${TEST_TOOLS:-0}" = 1 ]; then
  APT_PACKAGES="$APT_PACKAGES chromium-headless-shell"
  CEPH_PACKAGES="ceph-mon ceph-osd radosgw ceph-common"
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! dpkg -s $APT_PACKAGES $CEPH_PACKAGES >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
    if [ -n "$CEPH_PACKAGES" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $CEPH_PACKAGES >/dev/null
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch pinned on every install line: an unpinned torch pulls gigabytes of CUDA packages, and
# an eager upgrade would otherwise move it too
TORCH=torch==2.13.0
if [ "${LOWEST:-0}" = 1 ]; then
  "$VENV/bin/python" .ci/lower_bounds.py pyproject.toml test > "$VENV/lowest-constraints.txt"
  # the build backend at its lower bound too (it is in the constraints): built without
  # isolation, by that setuptools
  "${PIP[@]}" install -c "$VENV/lowest-constraints.txt" setuptools
  "${PIP[@]}" install "$TORCH" -c "$VENV/lowest-constraints.txt" --no-build-isolation -e ".[test]"
else
  "${PIP[@]}" install --upgrade --upgrade-strategy eager "$TORCH" -e ".[test,bench,plot]"
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
names = ["trio", "pyfuse3", "numpy", "h5py", "zstandard", "xxhash", "tqdm", "boto3",
         "safetensors", "torch", "transformers", "moto", "hypothesis", "pytest", "matplotlib",
         "lightning"]
print("corafs environment: " + ", ".join(f"{n} {md.version(n)}" for n in names))
PY
