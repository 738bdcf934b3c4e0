"""Generates the C source of the cffi API-mode module ``pyclusterc._native``.

CMake runs this at build time (see CMakeLists.txt) and compiles the output itself,
linked with the core's static library; setuptools is not involved.

    python build_native.py OUTPUT.c HEADER.h [HEADER.h ...]

The headers in csrc/ are written as plain declarations so that they serve both
the C compiler and cffi's cdef parser; preprocessor lines are dropped here.
"""
import os
import sys

import cffi


def cdef_text(header_path):
    with open(header_path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def main(argv):
    output, headers = argv[1], argv[2:]
    ffi = cffi.FFI()
    for header in headers:
        ffi.cdef(cdef_text(header))
    includes = "".join(f'#include "{os.path.basename(h)}"\n' for h in headers)
    ffi.set_source("pyclusterc._native", includes)
    ffi.emit_c_code(output)


if __name__ == "__main__":
    main(sys.argv)
