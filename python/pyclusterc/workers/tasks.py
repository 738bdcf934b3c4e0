"""The pool's records on a worker's endpoint, how tasks and results are pickled, and
the loop each pool worker runs.

    pool manager (pool.py)                      pool worker (worker_loop)
    TASK  id + (fn, args, kwargs) ---------->   unpickle it; on any failure:
                                          <--   UNDELIVERED id + (what, traceback text)
                                                run fn(*args, **kwargs), drop the arguments
                                          <--   RESULT id + the value
                                          <--   RAISED id + error_payload: the task's
                                                exception, or the one pickling its result
                                                raised (PicklingError, SystemExit, ...)
    STOP  ---------------------------------->   return: the worker exits 0
                                          <--   INIT_FAILED + error_payload, then exit:
                                                the initializer raised

Every record that names a task carries its id in an 8-byte header, so a payload that
cannot be unpickled on arrival still fails the right future. Objects travel with plain
pickle when that is enough, and by value (cloudpickle) when they name ``__main__`` or do
not pickle by reference (lambdas, functions and classes defined after the workers were
forked); SharedBuffers and sockets travel by fd as in any message.
"""
import pickle
import struct

import cloudpickle

from .._lowlevel.process import format_traceback
from ..ipc import channel
from ..ipc.ring import ChannelClosed
from .errors import describe, error_payload
from .ports import Pickler, decode
from .runtime import Terminated, current_context

__all__ = ["TASK", "STOP", "RESULT", "RAISED", "UNDELIVERED", "INIT_FAILED", "HEADER",
           "pack", "task_record", "worker_loop", "run_chunk", "ByValue"]

# Record kinds: ipc.channel keeps < 32, ipc.ring 32-36 and 255.
TASK, STOP, RESULT, RAISED, UNDELIVERED, INIT_FAILED = 48, 49, 50, 51, 52, 53
HEADER = struct.Struct("<Q")
_MAIN_NAME = b"__main__"


class _ByValuePickler(Pickler, cloudpickle.Pickler):
    """cloudpickle's by-value functions and classes, with pyclusterc's fd references."""

    def __init__(self, file, fds):
        super().__init__(file, fds, {})


def pack(obj, main_names_inside=0):
    """(payload, fds) for obj. A PicklingError (or whatever a __reduce__ raised) stays
    what it is. ``main_names_inside``: how many b"__main__" the payload may hold in
    by-value pickles it embeds (ByValue) without needing a by-value pickle itself."""
    try:
        payload = pickle.dumps(obj, 5)
    except Exception:  # noqa: BLE001  (retried below; its own error is the one that counts)
        pass
    else:                                 # a false hit only costs a by-value pickle
        if payload.count(_MAIN_NAME) <= main_names_inside:
            return payload, ()
    payload, fds = channel.pickle_with_fds(obj, _ByValuePickler)
    return payload, fds


class ByValue:
    """A function pickled by value once (for all of a map()'s tasks): each task carries
    the bytes, and a worker unpickles each distinct one once."""

    def __init__(self, fn, blob):
        self.fn, self.blob = fn, blob
        self.main_names = blob.count(_MAIN_NAME)

    @classmethod
    def of(cls, fn):
        """A ByValue for fn when fn needs one (it names __main__ or does not pickle by
        reference, and carries no fds), else None."""
        try:
            if _MAIN_NAME not in pickle.dumps(fn, 5):
                return None
        except Exception:  # noqa: BLE001  (lambdas, local functions: by value then)
            pass
        try:
            blob, fds = channel.pickle_with_fds(fn, _ByValuePickler)
        except Exception:  # noqa: BLE001  (each task will report it)
            return None
        return None if fds else cls(fn, blob)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return _load_by_value, (self.blob,)


_by_value_cache = {}


def _load_by_value(blob):
    fn = _by_value_cache.get(blob)
    if fn is None:
        if len(_by_value_cache) >= 16:
            _by_value_cache.clear()
        fn = _by_value_cache[blob] = pickle.loads(blob)
    return fn


def task_record(task_id, fn, args, kwargs):
    """(payload with header, fds) for a TASK record."""
    main_names = fn.main_names if isinstance(fn, ByValue) else 0
    payload, fds = pack((fn, args, kwargs), main_names)
    return HEADER.pack(task_id) + payload, fds


def run_chunk(fn, chunk):
    """map(chunksize>1)'s task: a list of results, one per argument tuple."""
    return [fn(*args) for args in chunk]


def worker_loop(initializer, initargs, max_tasks):
    """A pool worker's main: run TASK records until STOP, max_tasks or the parent's end."""
    endpoint = current_context().parent_port.endpoint
    if initializer is not None:
        try:
            initializer(*initargs)
        except Terminated:
            raise
        except BaseException as e:  # noqa: BLE001  (the pool breaks, as the stdlib's does)
            _send(endpoint, INIT_FAILED, b"", error_payload(e))
            return
    done = 0
    while True:
        try:
            batch = endpoint.receive_all()
            if not batch:
                endpoint.wait(-1)
                continue
        except (ChannelClosed, OSError):
            return                        # the parent is gone
        for kind, payload, fds in batch:
            if kind == STOP:
                return
            if kind != TASK:
                continue
            header = payload[:HEADER.size]
            kind, body, result_fds, keep = _run_task(memoryview(payload)[HEADER.size:], fds)
            _send(endpoint, kind, header, body, result_fds)
            del keep                      # no argument or result outlives its task
            done += 1
            if max_tasks and done >= max_tasks:
                return


def _run_task(payload, fds):
    """(record kind, body, fds, what must stay alive until sent) for one task."""
    try:
        fn, args, kwargs = decode(payload, fds)
    except Terminated:
        raise
    except BaseException as e:  # noqa: BLE001  (SystemExit from a __reduce__ too)
        return UNDELIVERED, pickle.dumps((describe(e), _traceback_text(e))), (), None
    error = None
    try:
        result = fn(*args, **kwargs)
    except Terminated:
        raise
    except BaseException as e:  # noqa: BLE001  (the task's failure goes to its future)
        result, error = None, e
    # Before anything else: the traceback keeps this frame, not the arguments.
    del fn, args, kwargs
    if error is not None:
        return RAISED, error_payload(error, _pack_exception), (), None
    try:
        body, result_fds = pack(result)
    except Terminated:
        raise
    except BaseException as e:  # noqa: BLE001  (PicklingError, SystemExit, KeyboardInterrupt)
        return RAISED, error_payload(e, _pack_exception), (), None
    return RESULT, body, result_fds, result


def _pack_exception(exc):
    payload, fds = pack(exc)
    if fds:
        raise TypeError("an exception carrying SharedBuffers or sockets travels as text")
    return payload


def _traceback_text(exc):
    try:
        return format_traceback(exc)
    except Exception:  # noqa: BLE001
        return describe(exc) + "\n"


def _send(endpoint, kind, header, body, fds=()):
    try:
        endpoint.send(kind, header + body, fds)
    except (ChannelClosed, OSError):
        pass                              # the parent is gone: nobody is waiting
