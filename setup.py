"""The compiled part of corafs: pyproject.toml holds everything else. setuptools builds the
extension on ``pip install .`` (a C compiler, the Python headers and libzstd's are needed; the
README's setup installs them), and ``python -m build`` makes wheels with it inside."""
import os

from setuptools import Extension, setup

# CORAFS_SANITIZE=address builds the kernels with AddressSanitizer (the CI leg that runs the
# kernel tests under it); the default is an optimized build
sanitize = os.environ.get("CORAFS_SANITIZE")
cflags = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
ldflags = []
if sanitize:
    cflags = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}", "-std=c11",
              "-Wall", "-Wextra", "-Wno-unused-parameter"]
    ldflags = [f"-fsanitize={sanitize}"]

# libzstd (Debian: libzstd-dev) decompresses byte planes inside the kernels' chain decode,
# straight into reused buffers and without the GIL
setup(ext_modules=[Extension("corafs.codecs._kernels", ["corafs/codecs/_kernels.c"],
                             libraries=["zstd"],
                             extra_compile_args=cflags, extra_link_args=ldflags)])
