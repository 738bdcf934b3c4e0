"""``ProcessManager``: PM2's model over node:cluster — N workers kept serving, restarted
when they crash, replaced one at a time on reload, drained on stop. The CLI, signals and
the control socket all call the same methods: ``start``, ``reload``, ``restart``,
``scale``, ``stop``, ``status``; ``run`` is the primary's loop.

A worker's life (``WorkerRecord.state``), and what moves it:

    starting ──app started (hooks.ready) [+ pyclusterc.ready() under --wait-ready]──► serving
       │                          (the primary feeds it connections only from here)
       ├──exit / app error / not ready in --listen-timeout (reload: aborts it)──► gone
    serving ──retire (reload, scale down, limits, stop)──► draining ──exit──► gone
    serving ──crash──► gone, and a new worker with the same index starts (backoff, limits)

Everything runs on the cluster loop's thread (its fd watches and timers): no locks.
"""
import os
import signal
import sys
import time

from .._lowlevel.wakeup import WakeupPipe
from .jobs import Replace, Scale
from .worker import APP_LOAD_ERROR, WORKER_INDEX_ENV

__all__ = ["ProcessManager", "WorkerRecord"]

_BACKOFF_MAX, _BACKOFF_RESET = 15.0, 30.0  # PM2's: restart delay cap, uptime that resets it
_CHECK_PERIOD = 1.0                        # --timeout, --max-memory-restart, --max-requests
_FORK_RETRY = (0.1, 5.0)                   # first and largest delay after a failed fork


class WorkerRecord:
    """What the manager knows of one worker beyond cluster.Worker."""

    def __init__(self, index, handle, clock, lineage=None, crashed=False):
        self.index = index
        self.handle = handle
        self.id = handle.id
        self.pid = handle.pid
        self.state = "starting"
        self.started = clock()
        self.sources = set()  # readiness signals seen: "server", "app"
        self.listens = 0
        self.restarts = 0 if lineage is None else lineage.restarts + 1
        self.unstable = lineage.unstable if crashed and lineage else 0  # crashes in a row, each early
        self.backoff = lineage.backoff if crashed and lineage else 0.0
        self.app_error = None  # (message, details) an app error it reported, if any


# What the scoreboard holds once workers record responses (--metrics-bind).
_LATENCY_FIELDS = ("latency_buckets", "latency_sum", "status_classes")


def rss_of(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class ProcessManager:
    """Built from a RunSettings value. ``cluster`` (default: pyclusterc.cluster), ``clock``
    and ``relay`` can be replaced, as the unit tests do with fakes."""

    def __init__(self, settings, *, cluster=None, clock=time.monotonic, relay=None,
                 worker_target=None, say=None, control=True, notifier=None):
        if cluster is None:
            from .. import cluster
        self.cluster = cluster
        self.settings = settings
        self.clock = clock
        self.relay = relay
        self.worker_target = worker_target  # runs in each forked worker (its main)
        self.say = say or self._say
        self.use_control = control
        self.records = {}          # cluster worker id -> WorkerRecord
        self.jobs = []
        self.wanted = settings.instances
        self.stopping = False
        self.said_draining = False  # the repeated-stop hint, printed once
        self.app_error = None
        self.announced = False
        self.started = clock()
        self.restarts = 0
        self.reloads = 0
        self.stop_replies = []
        self.control = None
        self.fork_failures = 0
        self.signals = None
        self.metrics = self.bridge = None
        if notifier is None:
            from .sdnotify import Notifier
            notifier = Notifier.from_environ()  # before any fork: workers must not inherit it
        self.notifier = notifier

    @staticmethod
    def _say(message, error=False):
        print(f"pyclusterc: {'error: ' if error else ''}{message}", file=sys.stderr if error else sys.stdout,
              flush=True)

    # -- public operations --------------------------------------------------------------
    def start(self):
        """Fork the workers and watch signals and the control socket; run() serves."""
        c = self.cluster
        c.on("message", self.on_message)
        c.on("exit", self.on_exit)
        c.on("listening", self.on_listening)
        c.on("ready", self.on_ready_signal)
        c.on("error", self.on_loop_error)
        if self.use_control:
            self.start_control()
        if getattr(self.settings, "metrics_bind", None):
            self.start_metrics()
        self.watch_signals()
        c.setup_primary(fork=True, feed_after_ready=True, target=self.worker_target)
        self.import_servers()
        for index in range(self.wanted):
            self.spawn(index)
        s = self.settings
        self.say(f"{s.instances} worker{'s' if s.instances != 1 else ''} ({s.interface}, sched "
                 f"{s.sched}) for {s.target} [{s.name}]")
        c.call_later(_CHECK_PERIOD, self.check_limits)
        c.call_later(s.listen_timeout, self.warn_if_not_ready)
        if self.notifier.watchdog_interval():
            self.watchdog()

    def import_servers(self):
        """Import the HTTP servers' code (uvicorn's protocols, asyncio, httptools) here,
        once, before the first fork: every worker, at start, in a reload or as a
        replacement, inherits it instead of importing it again. That was ~36 ms of CPU
        per ASGI worker and ~15 ms per WSGI one, taken in a reload from the CPUs the
        serving workers use. A server that cannot be imported is left to the worker,
        which reports the error as the app's."""
        interface = self.settings.interface
        try:
            if interface in ("asgi", "auto"):
                from ..serve import asgi  # noqa: F401 - imported for the workers
            if interface in ("wsgi", "auto"):
                from ..serve import wsgi  # noqa: F401 - imported for the workers
        except ImportError:
            pass

    def watchdog(self):
        """WATCHDOG=1 while the loop runs (systemd's WatchdogSec): a stuck primary is restarted."""
        self.notifier.watchdog()
        self.cluster.call_later(self.notifier.watchdog_interval(), self.watchdog)

    def start_metrics(self):
        from .metrics import LoopBridge, MetricsServer, loop_snapshot
        self.bridge = LoopBridge(self.cluster.watch_fd)
        self.metrics = MetricsServer(loop_snapshot(self.bridge.call_soon_threadsafe, self.status),
                                     self.settings.metrics_bind).start()
        self.say(f"metrics on http://{self.metrics.address[0]}:{self.metrics.address[1]}/metrics")

    def run(self):
        """The primary's loop, until stopped. Returns the exit status (0, or 1 after an
        app error that stopped the cluster)."""
        try:
            self.cluster.run()
        finally:
            self.cancel_jobs()
            if self.relay is not None:
                self.relay.drain()
            code = 0
            if self.app_error is not None:
                message, details = self.app_error
                if details:
                    sys.stderr.write(details if details.endswith("\n") else details + "\n")
                self.say(message, error=True)
                code = 1
            else:
                self.say("stopped")
            for respond in self.stop_replies:
                respond({"ok": code == 0, "message": "stopped",
                         "error": self.app_error and self.app_error[0]})
            if self.control is not None:
                self.control.close()
            if self.metrics is not None:
                self.metrics.close()
                self.bridge.close(self.cluster.unwatch_fd)
            self.notifier.close()
        return code

    def reload(self, respond=None):
        """Replace every worker, one at a time, each only once its successor is ready."""
        return self.enqueue(Replace(self, "reload", 1, respond))

    def restart(self, respond=None):
        """Replace every worker at once (new ones first, old ones drain when they are ready)."""
        return self.enqueue(Replace(self, "restart", 1 << 30, respond))

    def scale(self, count, respond=None):
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1024:
            error = f"invalid worker count {count!r}: use 1 to 1024"
            if respond is not None:
                respond({"ok": False, "error": error})
                return None
            raise ValueError(error)
        return self.enqueue(Scale(self, count, respond))

    def stop(self, respond=None, now=False):
        """Drain every worker within --kill-timeout, then run() returns. Stopping again
        changes nothing (a repeated TERM or `pyclusterc stop` must not cut the requests
        being drained), unless now=True: then the workers are killed at once (a second
        Ctrl-C)."""
        if respond is not None:
            self.stop_replies.append(respond)
        if self.stopping:
            if now:
                for record in list(self.records.values()):
                    record.handle.kill("SIGKILL")
            return
        self.stopping = True
        self.notifier.stopping()
        self.cancel_jobs()
        for record in self.records.values():
            if record.state != "gone":
                record.state = "draining"
        self.cluster.shutdown(timeout=self.settings.kill_timeout)

    def status(self):
        now = self.clock()
        workers = []
        for record in sorted(self.records.values(), key=lambda r: (r.index, r.id)):
            score = record.handle.score()
            workers.append({"id": record.index, "worker": record.id, "pid": record.pid,
                            "state": record.state, "uptime": now - record.started,
                            "restarts": record.restarts, "requests": score.get("requests", 0),
                            "inflight": score.get("inflight", 0),
                            "connections": score.get("connections", 0), "rss": rss_of(record.pid),
                            **{key: score[key] for key in _LATENCY_FIELDS if key in score}})
        s = self.settings
        return {"name": s.name, "pid": os.getpid(), "target": s.target, "interface": s.interface,
                "sched": s.sched, "uptime": now - self.started, "instances": self.wanted,
                "restarts": self.restarts, "reloads": self.reloads,
                "busy": ", ".join(getattr(job, "what", "scale") for job in self.jobs), "workers": workers}

    # -- the control socket ----------------------------------------------------------------
    def start_control(self):
        from .control import ControlServer
        self.control = ControlServer(self.settings.name, self.on_control, self.cluster)
        self.control.start()

    def on_control(self, request, respond):
        cmd = request["cmd"]
        if cmd in ("status", "metrics"):
            respond(self.status())
        elif cmd == "reload":
            self.reload(respond)
        elif cmd == "restart":
            self.restart(respond)
        elif cmd == "scale":
            self.scale(request.get("count"), respond)
        elif cmd == "stop":
            self.stop(respond)

    # -- signals: the handler only records; the loop acts ----------------------------------
    SIGNAL_ACTIONS = {"SIGTERM": "stop", "SIGINT": "stop", "SIGHUP": "reload",
                      "SIGTTIN": "more", "SIGTTOU": "fewer", "SIGUSR1": "reopen_logs",
                      "SIGUSR2": "ignored", "SIGWINCH": "ignored"}

    def watch_signals(self):
        """Handlers record; the wakeup fd makes the loop act (a handler may interrupt the
        loop's thread while it holds a channel's send lock)."""
        self.signals = WakeupPipe()
        received = []
        for name in self.SIGNAL_ACTIONS:
            signal.signal(getattr(signal, name), lambda signum, frame: received.append(signum))
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(self.signals.write_fd, warn_on_full_buffer=False)

        def on_wakeup():
            self.signals.drain()
            while received:
                self.on_signal(signal.Signals(received.pop(0)).name)
        self.cluster.watch_fd(self.signals.fileno(), on_wakeup)

    def on_signal(self, name):
        action = self.SIGNAL_ACTIONS.get(name, "ignored")
        if action == "stop":
            now = self.stopping and name == "SIGINT"
            if now:
                self.say("SIGINT again: killing the workers now")
            elif self.stopping and not self.said_draining:
                self.said_draining = True
                self.say(f"{name} again: still draining (up to --kill-timeout); "
                         f"INT again (Ctrl-C) stops the workers now")
            self.stop(now=now)
        elif action == "reload":
            self.reload()
        elif action == "more":
            self.scale(min(1024, self.wanted + 1))
        elif action == "fewer":
            self.scale(max(1, self.wanted - 1))
        elif action == "reopen_logs":
            reopen = getattr(self.relay, "reopen", None)
            if reopen is not None:
                reopen()
        else:
            self.say(f"{name} ignored (HUP reloads, TERM stops, TTIN/TTOU scale, USR1 reopens logs)")

    def primary_only_fds(self):
        """Fds a forked worker must close: they belong to the primary."""
        fds = []
        if self.signals is not None:
            fds += [self.signals.read_fd, self.signals.write_fd]
        if self.control is not None and self.control.fileno() >= 0:
            fds.append(self.control.fileno())
        if self.relay is not None:
            fds += self.relay.fds()
        if self.metrics is not None:
            fds += [self.metrics.fileno(), *self.bridge.fds()]
        return fds

    # -- workers ------------------------------------------------------------------------
    def spawn(self, index, lineage=None, crashed=False):
        """Fork a worker for index; None when the fork failed (retried with backoff
        when it replaces a crashed worker; reported either way, never raised)."""
        env = {WORKER_INDEX_ENV: str(index)}
        try:
            if self.relay is not None:
                handle = self.relay.fork(lambda: self.cluster.fork(env), index)
            else:
                handle = self.cluster.fork(env)
        except OSError as e:
            self.fork_failures += 1
            delay = min(_FORK_RETRY[1], _FORK_RETRY[0] * 2 ** min(self.fork_failures, 10))
            self.say(f"cannot start worker {index}: {e}; trying again in {delay:.2g} s", error=True)
            if not self.jobs or lineage is None:
                self.cluster.call_later(delay, lambda: self.respawn(index, lineage, crashed), keep_alive=True)
            return None
        self.fork_failures = 0
        record = WorkerRecord(index, handle, self.clock, lineage, crashed)
        if lineage is not None:
            self.restarts += 1
        self.records[handle.id] = record
        return record

    def respawn(self, index, lineage, crashed):
        if self.stopping or index >= self.wanted or any(
                r.index == index and r.state in ("starting", "serving") for r in self.records.values()):
            return
        self.spawn(index, lineage, crashed)

    def serving_records(self):
        return [r for r in self.records.values() if r.state == "serving"]

    def free_indexes(self):
        taken = {r.index for r in self.records.values() if r.state in ("starting", "serving")}
        return [i for i in range(1024) if i not in taken]

    def retire(self, record):
        """Disconnect on purpose: it drains, then exits; SIGKILL after --kill-timeout."""
        record.state = "draining"
        record.handle.disconnect()
        self.cluster.call_later(self.settings.kill_timeout,
                                lambda h=record.handle: h.is_dead() or h.kill("SIGKILL"))

    def discard(self, record):
        """A worker that will not serve (it failed to start): kill it now."""
        record.state = "draining"
        record.handle.kill("SIGKILL")

    def enqueue(self, job):
        if self.stopping:
            if job.respond is not None:
                job.respond({"ok": False, "error": "the cluster is stopping"})
            return None
        self.jobs.append(job)
        if len(self.jobs) == 1:
            self.start_job(job)
        return job

    def start_job(self, job):
        if isinstance(job, Replace) and self.announced:
            self.notifier.reloading()
        job.start()

    def cancel_jobs(self):
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job.cancel()

    def job_done(self, job):
        if self.jobs and self.jobs[0] is job:
            self.jobs.pop(0)
            if self.jobs and not self.stopping:
                self.start_job(self.jobs[0])
            elif self.announced and not self.stopping:
                self.notifier.ready(self.status_line())

    def status_line(self):
        serving = len(self.serving_records())
        return f"{serving} of {self.wanted} workers serving"

    # -- cluster events ---------------------------------------------------------------------
    def on_loop_error(self, exc, what):
        import traceback
        sys.stderr.write(f"pyclusterc: error in {what} (the primary goes on):\n"
                         + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        sys.stderr.flush()

    def on_message(self, worker, message):
        if not (isinstance(message, dict) and message.get("pyclusterc") == "app_error"):
            return
        record = self.records.get(worker.id)
        text = message.get("message") or "the app failed to start"
        details = message.get("details")
        if record is None or self.stopping:
            return
        if self.jobs and self.jobs[0].on_app_error(record, text):
            # A new version that does not start: show the app's own error once.
            if details:
                sys.stderr.write(details if details.endswith("\n") else details + "\n")
            self.say(text, error=True)
            return
        if not self.announced or not self.serving_records():
            self.stop_with_error(text, details)
        else:
            record.app_error = (text, details)  # shown with its exit; the others serve on

    def stop_with_error(self, message, details=None):
        if self.app_error is None:
            self.app_error = (message, details)
        if not self.stopping:
            self.stop()

    def on_listening(self, worker, address):
        record = self.records.get(worker.id)
        if record is not None:
            record.listens += 1
            self.check_ready(record)

    def on_ready_signal(self, worker, source):
        record = self.records.get(worker.id)
        if record is not None:
            record.sources.add(source)
            self.check_ready(record)

    def check_ready(self, record):
        """starting -> serving once the app has started (and called pyclusterc.ready()
        under --wait-ready); a script is ready when it listens on every address."""
        if record.state != "starting" or self.stopping:
            return
        s = self.settings
        if s.interface == "script":
            started = record.listens >= max(1, len(s.addresses))
        else:
            started = "server" in record.sources
        if not started or (s.wait_ready and "app" not in record.sources):
            return
        record.state = "serving"
        record.handle.start_feeding()
        if self.jobs:
            self.jobs[0].on_ready(record)
        if not self.announced:
            serving = len(self.serving_records())
            if serving >= self.wanted:
                self.announced = True
                self.say(f"ready, {serving} workers ready")
                self.notifier.ready(self.status_line())

    def warn_if_not_ready(self):
        if self.announced or self.stopping:
            return
        waiting = [r for r in self.records.values() if r.state == "starting"]
        if waiting:
            self.say(f"still waiting for {len(waiting)} worker(s) to start their app "
                     f"(--listen-timeout {self.settings.listen_timeout:g} s passed)")

    def on_exit(self, worker, code, signal_name):
        record = self.records.pop(worker.id, None)
        if record is None:
            return
        previous, record.state = record.state, "gone"
        how = f"signal {signal_name}" if signal_name else f"exit status {code}"
        if self.jobs and self.jobs[0].on_exit(record, how):
            return
        if previous == "draining" or self.stopping:
            return
        if code == APP_LOAD_ERROR and (not self.announced or not self.serving_records()):
            self.stop_with_error(f"worker {record.index} could not start the app (exit status {code})")
            return
        self.crashed(record, how)

    def crashed(self, record, how):
        s = self.settings
        uptime = self.clock() - record.started
        record.unstable = record.unstable + 1 if uptime < s.min_uptime else 0
        if record.unstable > s.max_restarts:
            self.stop_with_error(f"worker {record.index} keeps crashing: {record.unstable} exits in a row, "
                                 f"each within --min-uptime {s.min_uptime:g} s (last: {how}); "
                                 f"--max-restarts is {s.max_restarts}; stopping")
            return
        if record.index >= self.wanted:
            return  # scaled down meanwhile
        delay = 0.0
        if s.exp_backoff_restart_delay:
            base = s.exp_backoff_restart_delay
            delay = (base if not record.backoff or uptime >= _BACKOFF_RESET
                     else min(record.backoff * 1.5, _BACKOFF_MAX))
            record.backoff = delay
        self.say(f"worker {record.index} (pid {record.pid}) died ({how}); starting a new one"
                 + (f" in {delay:.3g} s" if delay else ""))
        if delay:
            self.cluster.call_later(delay, lambda: self.respawn(record.index, record, True), keep_alive=True)
        else:
            self.spawn(record.index, record, crashed=True)

    # -- limits: --timeout, --max-memory-restart, --max-requests ------------------------------
    def check_limits(self):
        if self.stopping:
            return
        s = self.settings
        now_ns = int(self.clock() * 1e9)
        for record in self.serving_records():
            handle = record.handle
            heartbeat = handle.heartbeat_ns()
            if s.timeout and heartbeat and now_ns - heartbeat > s.timeout * 1e9:
                self.say(f"worker {record.index} (pid {record.pid}) is hung: no progress for "
                         f"{(now_ns - heartbeat) / 1e9:.1f} s (--timeout {s.timeout:g}); killing it")
                handle.kill("SIGKILL")  # on_exit restarts it as a crash
                continue
            if self.jobs:
                continue  # one replacement at a time; look again next period
            reason = None
            if s.max_memory_restart:
                rss = rss_of(record.pid)
                if rss is not None and rss > s.max_memory_restart:
                    reason = (f"RSS {rss / 2**20:.0f} MiB > --max-memory-restart "
                              f"{s.max_memory_restart / 2**20:.0f} MiB")
            requests = handle.score().get("requests", 0)
            if s.max_requests and requests >= s.max_requests:
                reason = f"{requests} requests >= --max-requests {s.max_requests}"
            if reason:
                self.say(f"worker {record.index}: {reason}; replacing it")
                self.enqueue(Replace(self, f"replace worker {record.index}", 1, choose=lambda r=record: [r]))
        self.cluster.call_later(_CHECK_PERIOD, self.check_limits)
