#!/usr/bin/env bash
# The compiled kernels under AddressSanitizer: builds corafs/codecs/_kernels.c with
# -fsanitize=address into a copy of the package, then runs the kernel and codec tests against
# that copy (property tests against the numpy oracle, truncated and mutated blocks). Any
# out-of-bounds access aborts the run with ASan's report.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r corafs tests pyproject.toml "$build/"
rm -f "$build"/corafs/codecs/_kernels*.so
read -r include suffix < <("$PY" -c \
  "import sysconfig as s; print(s.get_paths()['include'], s.get_config_var('EXT_SUFFIX'))")
gcc -shared -fPIC -std=c11 -O1 -g -fno-omit-frame-pointer -fsanitize=address \
  -fsanitize-address-use-after-scope -Wall -Wextra -Wno-unused-parameter -Werror \
  -I"$include" corafs/codecs/_kernels.c -lzstd -o "$build/corafs/codecs/_kernels$suffix"
# python -S: no site processing, so the editable install's import hook does not map corafs to
# this checkout; the environment's packages come through PYTHONPATH, the ASan copy first
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export PYTHONPATH="$build:$site" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export LD_PRELOAD
LD_PRELOAD=$(gcc -print-file-name=libasan.so)
PY=$(realpath "$PY")
cd "$build"
"$PY" -S -c "import corafs.codecs._kernels as k; assert k.__file__.startswith('$build'), k.__file__; print('kernels under ASan:', k.__file__)"
"$PY" -S -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_codecs.py
