"""pyclusterc: Node.js's cluster and worker_threads for Python, on a C11 core."""
from .shared import (Atomics, Barrier, BigInt64Array, BigUint64Array, Condition, Float32Array,
                     Float64Array, Int8Array, Int16Array, Int32Array, Mutex, OwnerDied, Semaphore,
                     SharedBuffer, TypedArray, Uint8Array, Uint16Array, Uint32Array)
from .cluster import ready
from .workers import WorkerDied, WorkerPool, progress
from .workers import (BroadcastChannel, MessageChannel, MessagePort, Worker, WorkerError,
                      receive_message_on_port)

__version__ = "0.1.0"

__all__ = [
    "Atomics", "SharedBuffer", "TypedArray",
    "Int8Array", "Uint8Array", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array",
    "BigInt64Array", "BigUint64Array", "Float32Array", "Float64Array",
    "Mutex", "Condition", "Semaphore", "Barrier", "OwnerDied",
    "Worker", "WorkerError", "MessageChannel", "MessagePort", "BroadcastChannel",
    "receive_message_on_port", "WorkerPool", "WorkerDied", "progress", "ready",
]
