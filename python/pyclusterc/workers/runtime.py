"""What runs inside a worker, on either backend: its context (``parent_port``,
``worker_data``, ``thread_id``, ``is_main_thread``, per thread for the thread backend)
and its body: say online, run the target, keep serving a listened-to port, report an
uncaught exception as an ERROR record, and return the exit code (Node's: 0, 1)."""
import ctypes
import importlib
import os
import resource
import runpy
import sys
import threading

from .._lowlevel.process import exit_code_of
from ..ipc.ring import ERROR, ONLINE, ChannelClosed
from .errors import error_payload
from .ports import MessagePort, decode

__all__ = ["EXIT_UNCAUGHT", "EXIT_TERMINATED", "Terminated", "current_context",
           "run_worker", "check_target", "raise_in_thread", "read_worker_data",
           "apply_env_and_limits"]

EXIT_UNCAUGHT = 1
EXIT_TERMINATED = 1


class Context:
    def __init__(self, port, data, tid, is_main_thread=False):
        self.parent_port, self.worker_data, self.thread_id = port, data, tid
        self.is_main_thread = is_main_thread


_process_context = Context(None, None, 0, is_main_thread=True)   # replaced in a forked worker
_thread_context = threading.local()


def current_context():
    return getattr(_thread_context, "ctx", None) or _process_context


class Terminated(BaseException):
    """Raised inside a thread-backend worker by terminate()."""


def resolve_target(target, args):
    """A callable to run in the worker for target (callable, .py path or module:function)."""
    if callable(target):
        return lambda: target(*args)
    if target.endswith(".py"):
        def run_script():
            sys.argv = [target, *map(str, args)]
            runpy.run_path(target, run_name="__main__")
        return run_script
    module, _, attr = target.partition(":")
    fn = importlib.import_module(module)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return lambda: fn(*args)


def check_target(target):
    if callable(target):
        return
    if not isinstance(target, str):
        raise TypeError(f"Worker target must be a callable, a .py path or 'module:function', "
                        f"not {type(target).__name__}")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise FileNotFoundError(f"Worker target {target!r}: no such file")
    elif ":" not in target or not all(target.partition(":")[::2]):
        raise ValueError(f"Worker target {target!r}: use a callable, a path ending in .py, "
                         f"or 'module:function'")


def run_worker(endpoint, target, args, data, tid, port=None):
    """The worker's body (both backends): online, target, keep-alive; returns exit code.
    ``port``: the parent_port over endpoint, when made before a fork."""
    global _process_context
    port = port or MessagePort(endpoint)
    ctx = Context(port, data, tid)
    code = 0
    try:
        endpoint.send(ONLINE, b"", quiet=True)   # wakes the parent only for 'online' listeners
        if threading.current_thread() is threading.main_thread():
            _process_context = ctx
        _thread_context.ctx = ctx
        resolve_target(target, args)()
        port.serve_listeners()     # Node keeps a worker alive while its port is listened to
    except SystemExit as e:
        code = exit_code_of(e)
    except Terminated:
        code = EXIT_TERMINATED
    except BaseException as e:  # noqa: BLE001  (reported to the parent as 'error')
        code = EXIT_UNCAUGHT
        try:
            endpoint.send(ERROR, error_payload(e))
        except (ChannelClosed, OSError):
            pass
    return code


def raise_in_thread(thread, exc_type):
    # Runs when the thread next executes Python bytecode; code inside a C call
    # (time.sleep, a numpy op) finishes that call first. None clears a pending one.
    exc = None if exc_type is None else ctypes.py_object(exc_type)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), exc)


def read_worker_data(endpoint):
    """The next message on a fresh worker's endpoint (what the parent sent first)."""
    while True:
        m = endpoint.receive()
        if m is not None:
            return decode(m[1], m[2])
        endpoint.wait(-1)


def apply_env_and_limits(env, limits):
    if env is not None:
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
    if limits.get("max_memory_mb"):
        cap = int(limits["max_memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
