"""The WSGI server's request threads and its heartbeat (serve/wsgi.py's WSGIServer is
``server`` here: its ``handle(conn)``, ``threads``, ``inflight``, ``finished`` and
``heartbeat``)."""
import queue
import threading
import time
import traceback

__all__ = ["Progress", "RequestThreads"]


class RequestThreads:
    """The request threads, started only as concurrency needs them: a new one when more
    connections are in flight than threads exist. ThreadPoolExecutor starts one whenever
    no thread is idle at that instant, so a sequential client racing a thread's return
    to the pool grew it anyway; each thread costs a stack, a thread state and a malloc
    arena of private pages."""

    def __init__(self, server):
        self.server = server
        self.jobs = queue.SimpleQueue()
        self.workers = []

    def submit(self, conn, busy):
        """busy: connections in flight, this one included."""
        self.jobs.put(conn)
        if busy > len(self.workers) and len(self.workers) < self.server.threads:
            thread = threading.Thread(target=self._run, daemon=True,
                                      name=f"pyclusterc-wsgi_{len(self.workers)}")
            self.workers.append(thread)
            thread.start()

    def _run(self):
        handle = self.server.handle
        while (conn := self.jobs.get()) is not None:
            try:
                handle(conn)
            except BaseException:  # noqa: BLE001 - e.g. the app's sys.exit(): serve on
                traceback.print_exc()

    def shutdown(self):
        """Wait for the threads to finish what was submitted."""
        for _ in self.workers:
            self.jobs.put(None)
        for thread in self.workers:
            thread.join()


class Progress:
    """Stamps the heartbeat at most twice a second, and only while the worker makes
    progress: a free thread in the pool, or a request finished since the last stamp.
    A worker whose every thread is stuck in the app stops stamping (--timeout)."""

    def __init__(self, server):
        self.server = server
        self.last = 0.0
        self.finished = -1

    def __call__(self):
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        server = self.server
        if server.inflight < server.threads or server.finished != self.finished:
            self.last, self.finished = now, server.finished
            server.heartbeat()
