"""pyclusterc: Node.js's cluster and worker_threads for Python, on a C11 core.

The public names load on first use (PEP 562): ``from pyclusterc import Worker`` imports
the workers package then, and a control command (``pyclusterc reload``) starts without
importing asyncio, the shared-memory primitives or the workers at all — it runs beside
the app's workers, on the same CPUs."""
import importlib

__version__ = "0.1.0"

# Each public name and the subpackage that defines it.
_PUBLIC = {
    **dict.fromkeys(("Atomics", "Barrier", "BigInt64Array", "BigUint64Array", "Condition", "Float32Array",
                     "Float64Array", "Int8Array", "Int16Array", "Int32Array", "Mutex", "OwnerDied",
                     "Semaphore", "SharedBuffer", "TypedArray", "Uint8Array", "Uint16Array",
                     "Uint32Array"), ".shared"),
    "ready": ".cluster",
    **dict.fromkeys(("WorkerDied", "WorkerPool", "progress", "BroadcastChannel", "MessageChannel",
                     "MessagePort", "Worker", "WorkerError", "receive_message_on_port"), ".workers"),
}

__all__ = [
    "Atomics", "SharedBuffer", "TypedArray",
    "Int8Array", "Uint8Array", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array",
    "BigInt64Array", "BigUint64Array", "Float32Array", "Float64Array",
    "Mutex", "Condition", "Semaphore", "Barrier", "OwnerDied",
    "Worker", "WorkerError", "MessageChannel", "MessagePort", "BroadcastChannel",
    "receive_message_on_port", "WorkerPool", "WorkerDied", "progress", "ready",
]


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        try:  # a subpackage (pyclusterc.cluster, .shared, ...), as an eager import made them
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
