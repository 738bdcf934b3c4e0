"""Workers for parallel compute, after ``node:worker_threads``, and ``WorkerPool``, a
``concurrent.futures.Executor`` over them.

Parent side: ``Worker(target, ...)`` (``worker``). Events reach you in one of two ways,
never both for the same message:

* pull — ``worker.receive(timeout)``, ``for msg in worker``, ``await worker.receive_async()``
  read messages in order in the calling thread; an uncaught exception in the worker is
  raised (as ``WorkerError``) where it falls in the stream, and the stream ends at exit.
* push — ``worker.on("message" | "online" | "error" | "exit" | "messageerror", cb)`` starts
  one reader thread for that worker which calls listeners in Node's order
  (``online`` → messages → ``error`` → ``exit``). Messages that arrive while no
  ``message`` listener is registered are queued for the pull API instead.

Worker side: ``from pyclusterc.workers import parent_port, worker_data, thread_id,
is_main_thread`` (per worker even with the thread backend: they are looked up when
imported, through this module's ``__getattr__``). A worker whose ``parent_port`` has a
``message`` listener when its target returns stays alive until the port is closed
(Node's keep-alive), serving the listener.

What lives here: ``errors`` (what the parent raises), ``ports`` (MessagePort and message
pickling), ``runtime`` (the worker's body and context), ``worker`` (Worker), ``start``
(spawn and forkserver), ``broadcast`` (BroadcastChannel), ``tasks`` (the pool's records
and the loop in its workers), ``pool`` (WorkerPool), ``progress`` (a progress bar over
any Executor's results).

May import: ``_lowlevel``, ``shared``, ``ipc``; never ``cluster``, ``serve``, ``manager``,
``cli``.
"""
from .broadcast import BroadcastChannel
from .errors import BrokenWorkerPool, RemoteTraceback, TaskTransferError, WorkerDied, WorkerError
from .pool import WorkerPool
from .ports import MessageChannel, MessagePort, receive_message_on_port
from .progress import progress
from .runtime import current_context
from .worker import Worker

__all__ = [
    "Worker", "WorkerError", "MessagePort", "MessageChannel", "BroadcastChannel",
    "receive_message_on_port", "parent_port", "worker_data", "is_main_thread", "thread_id",
    "WorkerPool", "WorkerDied", "BrokenWorkerPool", "TaskTransferError", "RemoteTraceback",
    "progress",
]

_PER_WORKER = ("parent_port", "worker_data", "thread_id", "is_main_thread")


def __getattr__(name):
    # Looked up at import time in the worker, so each thread-backend worker sees its own.
    if name in _PER_WORKER:
        return getattr(current_context(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
