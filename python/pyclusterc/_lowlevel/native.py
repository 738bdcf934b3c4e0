"""The native module and the translation of its -errno returns into exceptions."""
import errno
import os
import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"pyclusterc's native core supports Linux only for now (this is {sys.platform})"
    )

from .._native import ffi, lib  # noqa: E402  (after the platform check on purpose)

__all__ = ["ffi", "lib", "os_error", "check"]


def os_error(rc, what):
    """OSError (its errno subclass) for a negative errno return, naming the object."""
    code = -rc
    return OSError(code, f"{what}: {os.strerror(code)}")


def check(rc, what):
    """Return rc when >= 0, else raise the OSError it stands for."""
    if rc < 0:
        raise os_error(rc, what)
    return rc


# Negative errnos the wrappers compare against.
ETIMEDOUT = -errno.ETIMEDOUT
EINTR = -errno.EINTR
EAGAIN = -errno.EAGAIN
EPIPE = -errno.EPIPE
EBUSY = -errno.EBUSY
EPERM = -errno.EPERM
EEXIST = -errno.EEXIST
ENOENT = -errno.ENOENT
ENOMEM = -errno.ENOMEM
EPROTO = -errno.EPROTO

_FOREVER = -1
_MAX_NS = 1 << 62


def timeout_ns(timeout, what="timeout"):
    """Seconds (None = forever, negative = 0, NaN = forever as in JS) -> ns for C (-1 = forever)."""
    if timeout is None:
        return _FOREVER
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout == float("inf"):
        return _FOREVER
    if timeout <= 0:
        return 0
    if timeout >= _MAX_NS / 1e9:  # compare first: 1e300 * 1e9 is inf, 10**400 no float
        return _MAX_NS
    return int(timeout * 1e9)


def call_restarting(call, timeout_ns_value):
    """Run call(ns) until it returns anything but -EINTR, with the time left (PEP 475).

    Returning to Python between calls is what lets pending signal handlers run; a
    handler that raises ends the wait with its exception.
    """
    if timeout_ns_value < 0:
        rc = call(-1)
        while rc == EINTR:
            rc = call(-1)
        return rc
    deadline = _monotonic_ns() + timeout_ns_value
    rc = call(timeout_ns_value)
    while rc == EINTR:
        rc = call(max(0, deadline - _monotonic_ns()))
    return rc


from time import monotonic_ns as _monotonic_ns  # noqa: E402
