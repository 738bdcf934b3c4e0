"""``--metrics-bind HOST:PORT``: Prometheus metrics served by the primary.

    scraper ──GET /metrics──► MetricsServer (prometheus_client's threaded HTTP server,
                                 │             one daemon thread, never the primary's loop)
                                 ▼
                         ClusterCollector.collect()
                                 │  snapshot()  -> the status dict (ProcessManager.status())
                                 ▼
               Gauge/Counter/Histogram families  ->  prometheus_client's text exposition

The exposition format is prometheus_client's (``generate_latest``), not ours. Worker series
are labelled ``cluster`` and ``worker`` — the *stable* worker id (0..N-1 once issue 10's
ids land), never the pid, so a series survives reloads and restarts.

What the caller (the ProcessManager) must do:

- Pass a ``snapshot`` callable that is **safe to call from another thread** and returns
  the status dict. ``ProcessManager.status()`` itself is not (it iterates dicts the loop
  mutates, and the cluster loop's ``call_later`` is loop-thread only): in the loop thread,
  make ``bridge = LoopBridge(cluster.watch_fd)`` (a pipe the loop watches) and pass
  ``loop_snapshot(bridge.call_soon_threadsafe, manager.status)``, which runs ``status()``
  on the loop thread and waits (bounded, 2 s) for it. ``bridge.close(cluster.unwatch_fd)``
  at stop; a preloaded (forked) worker closes ``bridge.fds()``.
- The setting is ``OPTIONS`` below (``metrics_bind``, flag ``--metrics-bind``).
- ``server = MetricsServer(snapshot, "127.0.0.1:9100")`` then ``server.start()`` once
  the listeners are bound (``MetricsError`` — one line — for a bad address or a port in
  use); ``server.address`` is the bound (host, port) (port 0 picks one).
  ``server.close()`` at stop. A preloaded (forked) worker must close ``server.fileno()``.
- Fields read from the snapshot (missing ones are skipped, never an error):
  top level ``name``, ``instances``, ``uptime``, ``restarts``, ``reloads``, ``queued``;
  per worker (``workers`` list) ``id``, ``pid``, ``state``, ``uptime``, ``restarts``,
  ``requests``, ``inflight``, ``connections``, ``rss``, ``queued`` (connections handed to
  it, not yet accepted), ``heartbeat_age`` (seconds), ``cpu_seconds`` (else read from
  ``/proc/PID/stat``), ``latency_buckets`` (list of (le seconds, cumulative count), the
  last one +Inf or the count is taken from ``requests``), ``latency_sum`` (seconds) and
  ``status_classes`` ({"2xx": n, ...}).
"""
import math
import os
import threading

# prometheus_client is imported inside the functions that make metrics: this module's
# OPTIONS are read by every command line, and a control command should start light.
from .._lowlevel.options import Option
from .._lowlevel.wakeup import WakeupPipe

__all__ = ["OPTIONS", "ClusterCollector", "MetricsServer", "MetricsError", "LoopBridge", "loop_snapshot", "parse_bind",
           "process_cpu_seconds", "process_rss", "render"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class MetricsError(ValueError):
    """A bad --metrics-bind, or one that cannot be bound: one line."""


def _bind_option(value):
    try:
        parse_bind(value)
    except MetricsError as e:
        raise ValueError(str(e).split(": ", 1)[1]) from None
    return value


OPTIONS = (
    Option("metrics_bind", None, "serve Prometheus metrics on HOST:PORT (/metrics), from the primary",
           parse=_bind_option, metavar="HOST:PORT"),
)


def process_cpu_seconds(pid):
    """User + system CPU seconds of ``pid`` from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # After the comm field: state is fields[0]; utime, stime are stat fields 14, 15.
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def process_rss(pid):
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class LoopBridge:
    """Runs callbacks on a loop thread on behalf of other threads: they queue the callback
    and write a byte to a pipe whose read end the loop watches (``watch(fd, callback)``,
    called on the loop thread)."""

    def __init__(self, watch):
        self._wakeup = WakeupPipe()
        self._lock = threading.Lock()
        self._queue = []
        self.token = watch(self._wakeup.fileno(), self._run)

    def call_soon_threadsafe(self, callback):
        with self._lock:
            self._queue.append(callback)
        self._wakeup.wake()

    def _run(self):
        self._wakeup.drain()
        with self._lock:
            callbacks, self._queue = self._queue, []
        for callback in callbacks:
            callback()

    def fds(self):
        return [self._wakeup.read_fd, self._wakeup.write_fd]

    def close(self, unwatch=None):
        if unwatch is not None and self.token is not None:
            unwatch(self.token)
            self.token = None
        self._wakeup.close()


def loop_snapshot(call_soon_threadsafe, status, timeout=2.0):
    """A thread-safe snapshot(): runs ``status()`` on the loop thread through
    ``call_soon_threadsafe(callback)`` and waits up to ``timeout`` seconds for it."""
    def snapshot():
        done = threading.Event()
        box = {}

        def run():
            try:
                box["value"] = status()
            except Exception as e:  # noqa: BLE001 - reported to the scraper, not the loop
                box["error"] = e
            done.set()
        call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError(f"the primary's loop did not answer within {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]
    return snapshot


class ClusterCollector:
    """A prometheus_client custom collector over ``snapshot()``."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def describe(self):
        return []  # the series depend on the snapshot; do not collect at registration

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        up = GaugeMetricFamily("pyclusterc_up", "1 if the primary answered this scrape.", labels=[])
        try:
            s = self.snapshot()
        except Exception:  # noqa: BLE001 - a scrape must never take anything down
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        name = str(s.get("name", "default"))
        workers = list(s.get("workers") or ())
        yield from self._cluster_families(name, s, workers)
        yield from self._worker_families(name, workers)
        yield from self._latency_families(name, workers)

    @staticmethod
    def _cluster_families(name, s, workers):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        def gauge(metric, text, value):
            family = GaugeMetricFamily(metric, text, labels=["cluster"])
            family.add_metric([name], value)
            return family

        def counter(metric, text, value):
            family = CounterMetricFamily(metric, text, labels=["cluster"])
            family.add_metric([name], value)
            return family
        yield gauge("pyclusterc_workers", "Live worker processes.", len(workers))
        if "instances" in s:
            yield gauge("pyclusterc_workers_wanted", "Worker count the primary keeps.", s["instances"])
        if "uptime" in s:
            yield gauge("pyclusterc_uptime_seconds", "Seconds since the primary started.", s["uptime"])
        if "restarts" in s:
            yield counter("pyclusterc_restarts", "Workers started again after a crash or a limit.",
                          s["restarts"])
        if "reloads" in s:
            yield counter("pyclusterc_reloads", "Rolling reloads and restarts completed.", s["reloads"])
        yield counter("pyclusterc_requests", "Requests served by all workers (scoreboard).",
                      sum(_num(w.get("requests")) for w in workers))
        yield gauge("pyclusterc_inflight_requests", "Requests being served now, all workers.",
                    sum(_num(w.get("inflight")) for w in workers))
        if "queued" in s:
            yield gauge("pyclusterc_queued_connections", "Connections accepted, not yet handed to a worker.",
                        s["queued"])
        cpu = process_cpu_seconds(s["pid"]) if "pid" in s else None
        if cpu is not None:
            yield counter("pyclusterc_primary_cpu_seconds", "CPU seconds used by the primary.", cpu)

    @staticmethod
    def _worker_families(name, workers):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        labels = ["cluster", "worker"]
        specs = (  # (metric, kind, help, value of a worker or None to skip it)
            ("pyclusterc_worker_requests", CounterMetricFamily, "Requests served (scoreboard).",
             lambda w: w.get("requests")),
            ("pyclusterc_worker_inflight_requests", GaugeMetricFamily, "Requests being served now.",
             lambda w: w.get("inflight")),
            ("pyclusterc_worker_open_connections", GaugeMetricFamily, "Open client connections.",
             lambda w: w.get("connections")),
            ("pyclusterc_worker_queued_connections", GaugeMetricFamily,
             "Connections handed to the worker, not yet accepted by it.", lambda w: w.get("queued")),
            ("pyclusterc_worker_restarts", CounterMetricFamily, "Restarts of this worker's slot.",
             lambda w: w.get("restarts")),
            ("pyclusterc_worker_resident_memory_bytes", GaugeMetricFamily, "Resident set size.",
             lambda w: w.get("rss") if w.get("rss") is not None else process_rss(w.get("pid"))),
            ("pyclusterc_worker_cpu_seconds", CounterMetricFamily, "User + system CPU seconds.",
             lambda w: w.get("cpu_seconds") if w.get("cpu_seconds") is not None
             else process_cpu_seconds(w.get("pid"))),
            ("pyclusterc_worker_heartbeat_age_seconds", GaugeMetricFamily,
             "Seconds since the worker's loop last stamped its heartbeat.", lambda w: w.get("heartbeat_age")),
            ("pyclusterc_worker_uptime_seconds", GaugeMetricFamily, "Seconds since the worker started.",
             lambda w: w.get("uptime")),
        )
        for metric, kind, text, value_of in specs:
            family = kind(metric, text, labels=labels)
            for w in workers:
                value = value_of(w)
                if value is not None:
                    family.add_metric([name, str(w["id"])], value)
            yield family
        responses = CounterMetricFamily("pyclusterc_worker_responses", "Responses by status class.",
                                        labels=["cluster", "worker", "status_class"])
        for w in workers:
            for status_class, value in sorted((w.get("status_classes") or {}).items()):
                responses.add_metric([name, str(w["id"]), str(status_class)], value)
        yield responses

    @staticmethod
    def _latency_families(name, workers):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        per_worker = HistogramMetricFamily("pyclusterc_worker_request_duration_seconds",
                                           "Request duration.", labels=["cluster", "worker"])
        total = {}
        total_sum = 0.0
        seen = False
        for w in workers:
            buckets = w.get("latency_buckets")
            if not buckets:
                continue
            seen = True
            pairs = [(float(le), int(count)) for le, count in buckets]
            if not math.isinf(pairs[-1][0]):
                pairs.append((math.inf, max(pairs[-1][1], int(_num(w.get("requests"))))))
            latency_sum = float(_num(w.get("latency_sum")))
            per_worker.add_metric([name, str(w["id"])], [(_le(le), c) for le, c in pairs], latency_sum)
            for le, count in pairs:
                total[le] = total.get(le, 0) + count
            total_sum += latency_sum
        if not seen:
            return
        yield per_worker
        family = HistogramMetricFamily("pyclusterc_request_duration_seconds",
                                       "Request duration, all workers.", labels=["cluster"])
        # Workers may disagree on buckets only if a reload changed them; sum what each has.
        family.add_metric([name], [(_le(le), total[le]) for le in sorted(total)], total_sum)
        yield family


def _num(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _le(value):
    return "+Inf" if math.isinf(value) else repr(float(value))


def render(snapshot):
    """The exposition text for one snapshot (bytes) — also what `pyclusterc metrics` can print."""
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(snapshot))
    return generate_latest(registry)


def parse_bind(text):
    """"HOST:PORT" / "[::1]:PORT" / ":PORT" -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise MetricsError(f"invalid --metrics-bind {text!r}: use HOST:PORT, e.g. 127.0.0.1:9100 or [::1]:9100")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsServer:
    """prometheus_client's threaded HTTP server on one daemon thread; /metrics and /."""

    def __init__(self, snapshot, bind):
        from prometheus_client import CollectorRegistry
        self.bind = parse_bind(bind) if isinstance(bind, str) else bind
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(snapshot))
        self._server = None
        self._thread = None

    def start(self):
        from prometheus_client.exposition import start_http_server
        host, port = self.bind
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        server.socket.set_inheritable(False)
        self._server, self._thread = server, thread
        return self

    @property
    def address(self):
        return tuple(self._server.server_address[:2]) if self._server else None

    def fileno(self):
        return self._server.fileno() if self._server else -1

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = self._thread = None
