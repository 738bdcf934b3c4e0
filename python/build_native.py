"""Generates the C source of the cffi API-mode module ``pyclusterc._native``.

CMake runs this at build time (see CMakeLists.txt) and compiles the output itself,
linked with the core's static library; setuptools is not involved.

    python build_native.py OUTPUT.c HEADER.h [HEADER.h ...]

The headers in csrc/ are written as plain declarations so that they serve both
the C compiler and cffi's cdef parser; preprocessor lines are dropped here.
"""
import os
import re
import sys

import cffi

# Calls that never block (an unlock's or a notify's wake-up is one short syscall;
# notify's table lock, and an access-log buffer's, are held for a few instructions by
# C code that never needs the GIL) and never set errno. cffi releases the GIL and saves errno
# around every call; for a single atomic instruction that bookkeeping is most of the
# cost (bench/bench_atomics.py: ~3.2x -> ~4-5x faster than multiprocessing.Value).
# Blocking calls (waits, locks, channel I/O) keep releasing the GIL.
_HOLD_GIL = re.compile(
    r"pc_(?:load|store|add|sub|and|or|xor|exchange|compare_exchange)_[iu](?:8|16|32|64)"
    r"|pc_mutex_trylock|pc_mutex_unlock|pc_notify|pc_score_\w+"
    r"|pc_lines_(?:add|add_request|pending|take|record_into)")
_GIL_RELEASE = re.compile(
    r"  Py_BEGIN_ALLOW_THREADS\n  _cffi_restore_errno\(\);\n"
    r"  \{ ((?:result = )?(\w+)\(.*?\);) \}\n  _cffi_save_errno\(\);\n  Py_END_ALLOW_THREADS\n")


def keep_gil_for_atomics(source):
    """Drop the GIL release and errno save around the non-blocking atomic ops."""
    def strip(match):
        if _HOLD_GIL.fullmatch(match.group(2)):
            return "  { " + match.group(1) + " }\n"
        return match.group(0)
    new_source, count = _GIL_RELEASE.subn(strip, source)
    if new_source == source:
        print("build_native.py: warning: cffi's call wrapper changed shape; atomics keep "
              "releasing the GIL (correct, only slower)", file=sys.stderr)
    return new_source


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
    with open(output, encoding="utf-8") as f:
        source = f.read()
    with open(output, "w", encoding="utf-8") as f:
        f.write(keep_gil_for_atomics(source))


if __name__ == "__main__":
    main(sys.argv)
