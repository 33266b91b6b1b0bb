#!/usr/bin/env bash
# Installs everything corafs and its tests need on a fresh Debian machine (run as root for apt).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! dpkg -s fuse3 libfuse3-dev pkg-config rsync sqlite3 >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev pkg-config rsync sqlite3 >/dev/null
  fi
fi
PY=${PYTHON:-python3}
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages
$PY -m pip install -q --disable-pip-version-check torch==2.13.0
$PY -m pip install -q --disable-pip-version-check -e ".[test,bench]"
