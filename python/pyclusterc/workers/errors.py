"""What goes wrong in a worker or a pool, as the parent sees it.

A worker's uncaught exception crosses as text (its traceback) plus, when it pickles, the
exception itself; the parent raises ``WorkerError`` with the original as ``__cause__``
when that can be rebuilt. The pool's errors subclass ``concurrent.futures``'
``BrokenProcessPool`` so that code written for ``ProcessPoolExecutor`` catches them.
"""
import pickle
from concurrent.futures.process import BrokenProcessPool

from .._lowlevel.process import format_traceback

__all__ = ["WorkerError", "RemoteTraceback", "WorkerDied", "BrokenWorkerPool",
           "TaskTransferError", "describe", "error_payload", "error_from_payload", "rebuild_error"]


class WorkerError(Exception):
    """An exception the worker did not catch (or one that could not be rebuilt in the
    parent). ``remote_traceback`` is its formatted traceback, ``exc_type`` its
    qualified name; ``__cause__`` is the original exception when it could be rebuilt."""

    def __init__(self, message, remote_traceback="", exc_type=""):
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.exc_type = exc_type

    def __str__(self):
        return f"{self.args[0]}\n\nRemote traceback:\n{self.remote_traceback}"

    def __reduce__(self):
        return WorkerError, (self.args[0], self.remote_traceback, self.exc_type)


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of an exception re-raised from a worker, so that the worker's
    traceback prints under the parent's (as ``concurrent.futures.process`` does)."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return f'\n"""\n{self.tb}"""'


class WorkerDied(BrokenProcessPool):
    """The worker running a task ended before finishing it (the pool replaced it)."""


class BrokenWorkerPool(BrokenProcessPool):
    """The pool cannot run tasks any more (a worker initializer failed)."""


class TaskTransferError(BrokenProcessPool):
    """A task, its result or its exception could not travel between the parent and a
    worker (it does not unpickle on the other side). The message says which, and why;
    ``remote_traceback`` has the worker's traceback as text when there is one."""

    def __init__(self, message, remote_traceback=""):
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return TaskTransferError, (self.args[0], self.remote_traceback)


def describe(exc):
    """``TypeName: message``, as the last line of a traceback reads (never raises)."""
    name = type(exc).__qualname__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001  (a broken __str__ must not hide the exception)
        text = ""
    return f"{name}: {text}" if text else name


def error_payload(exc, dumps=pickle.dumps):
    """Bytes for exc that always unpickle: its text, and the exception itself pickled
    apart (None when it does not pickle), to be rebuilt only if the receiver can."""
    try:
        original = dumps(exc)
    except BaseException:  # noqa: BLE001  (many exceptions do not pickle: the text suffices)
        original = None
    try:
        tb = format_traceback(exc)
    except Exception:  # noqa: BLE001
        tb = describe(exc) + "\n"
    return pickle.dumps((describe(exc), tb, type(exc).__qualname__, original))


def rebuild_error(payload):
    """(summary, traceback text, type name, the exception or None, why it could not be
    rebuilt or None) from error_payload's bytes."""
    summary, tb, exc_type, original = pickle.loads(payload)
    if original is None:
        return summary, tb, exc_type, None, "it does not pickle"
    try:
        exc = pickle.loads(original)
    except (Exception, SystemExit) as e:  # noqa: BLE001  (e.g. an __init__ with other arguments)
        return summary, tb, exc_type, None, f"unpickling it raised {describe(e)}"
    if not isinstance(exc, BaseException):
        return summary, tb, exc_type, None, f"it unpickled as a {type(exc).__name__}"
    return summary, tb, exc_type, exc, None


def error_from_payload(payload):
    """(WorkerError, the rebuilt original or None) from error_payload's bytes."""
    summary, tb, exc_type, exc, _ = rebuild_error(payload)
    err = WorkerError(summary, tb, exc_type)
    if exc is not None:
        err.__cause__ = exc
    return err, exc
