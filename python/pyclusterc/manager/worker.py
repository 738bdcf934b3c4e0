"""The worker entry point of ``pyclusterc run``: in each forked worker, load the app
(unless preloaded), listen on every bind, serve until told to stop.

    Primary.fork ──► worker_main(settings) ──► load_target ──► cluster.listen(each address)
        ──► serve.asgi.run / serve.wsgi.run (app, listeners, settings, WorkerHooks)
              hooks.ready()  ──► cluster.worker.ready("server") ──► the primary feeds it
              hooks.on_stop  ◄── disconnect from the primary, or TERM/INT
    A worker that cannot load the app (or listen, or start it) tells the primary why and
    exits with APP_LOAD_ERROR: the primary shows the reason once and does not respawn it
    in a loop.
"""
import logging
import os
import signal
import sys
import threading

from .. import cluster
from .app import AppError, add_app_dir, app_traceback, load_target
from .settings import env_dict

__all__ = ["worker_main", "WorkerHooks", "APP_LOAD_ERROR", "WORKER_INDEX_ENV"]

# Exit status of a worker that could not load the app or listen (gunicorn's APP_LOAD_ERROR).
APP_LOAD_ERROR = 4
# The worker's stable index, 0..N-1, kept by its replacement (PM2's NODE_APP_INSTANCE).
WORKER_INDEX_ENV = "PYCLUSTERC_WORKER_ID"


class WorkerHooks:
    """What a server gets from the worker around it (see ``pyclusterc.serve``)."""

    def __init__(self, settings):
        self.slot = cluster.worker.slot
        self.live_counts = settings.sched == "least"
        # Each response's status class and duration into the slot, when metrics are
        # served (--metrics-bind): one C call per response, nothing otherwise.
        self.metrics_slot = self.slot if getattr(settings, "metrics_bind", None) else None
        self._callbacks = []
        self._fired = threading.Event()
        self._lock = threading.Lock()
        self._listeners = ()
        cluster.worker.on("disconnect", self._fire)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._fire)

    def watch_listeners(self, listeners):
        self._listeners = {listener.listener_id: listener for listener in listeners}

    def _fire(self, *_):
        with self._lock:
            if self._fired.is_set():
                return
            self._fired.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_stop(self, callback):
        """callback runs once, when this worker should drain: the primary disconnects
        it (reload, scale, stop) or it gets TERM/INT itself."""
        with self._lock:
            fired = self._fired.is_set()
            if not fired:
                self._callbacks.append(callback)
        if fired:
            callback()

    @property
    def stopping(self):
        return self._fired.is_set()

    def ready(self):
        """The app has started: the primary may hand this worker connections."""
        cluster.worker.ready("server")

    def heartbeat(self, stamp_ns=None):
        if self.slot is not None:
            self.slot.beat(stamp_ns)

    def hand_back(self, sock, listener=None):
        """An idle kept-alive connection goes back to the primary for a ready worker."""
        if listener is None:
            if len(self._listeners) != 1:
                return False
            listener = next(iter(self._listeners.values()))
        return listener.hand_back(sock)


def fail(message, details=None):
    """Tell the primary why this worker cannot serve, then exit with APP_LOAD_ERROR."""
    try:
        cluster.worker.send({"pyclusterc": "app_error", "message": message, "details": details})
    except Exception:  # noqa: BLE001 - already disconnected: the primary is stopping on
        pass           # another worker's report of the same error; say it once, not twice
    sys.stdout.flush()
    raise SystemExit(APP_LOAD_ERROR)


def worker_main(settings, app=None, interface=None, close_fds=()):
    """Load (unless preloaded), listen on every address, serve until told to stop."""
    for fd in close_fds:  # a forked worker: the primary's own loop fds are not its own
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the stop hooks are in place
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGWINCH):  # meant for the primary
        signal.signal(signum, signal.SIG_IGN)
    if threading.current_thread() is threading.main_thread():
        signal.set_wakeup_fd(-1)  # a forked worker must not wake its primary's loop
    os.environ.update(env_dict(settings))
    if settings.interface == "script":
        # Stopping closes the script's listeners: its accept loops end, then it returns.
        WorkerHooks(settings).on_stop(cluster.worker.disconnect)
        run_script(settings)
        return
    if app is None:
        try:
            app, interface = load_target(settings.target, settings.interface, settings.app_dir,
                                             factory=settings.factory)
        except AppError as e:
            fail(str(e), e.details)
    configure_logging(settings)
    listeners = []
    try:
        for address in settings.addresses:
            listeners.append(cluster.listen(address))
    except OSError as e:
        fail(f"worker {os.environ.get(WORKER_INDEX_ENV, cluster.worker.id)}: {e}")
    hooks = WorkerHooks(settings)
    hooks.watch_listeners(listeners)
    if interface == "asgi":
        from ..serve import asgi
        code = asgi.run(app, listeners, settings, hooks)
        if code == asgi.LIFESPAN_FAILED:
            fail("the app's lifespan startup failed (see its error above)")
    else:
        from ..serve import wsgi
        code = wsgi.run(app, listeners, settings, hooks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # daemon threads (channel reader, pools) must not delay the exit


def run_script(settings):
    import runpy
    path = settings.target
    sys.argv = [path]
    add_app_dir(settings.app_dir or os.path.dirname(os.path.abspath(path)))
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the script's own error: shown once
        if isinstance(e, KeyboardInterrupt):
            raise SystemExit(0)
        fail(f"{path} failed: {type(e).__name__}: {e}", app_traceback(e))


def configure_logging(settings):
    """Our servers' loggers only ("pyclusterc", uvicorn's set their own): the root logger
    stays the app's, so a Django or Flask app's lines are printed once, not twice."""
    level = settings.log_level.upper()
    level = 5 if level == "TRACE" else getattr(logging, level)
    ours = logging.getLogger("pyclusterc")
    if not ours.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        ours.addHandler(handler)
    ours.setLevel(level)
    ours.propagate = False
