"""How the CLI shows a running cluster's replies: the status table, Prometheus text,
and a refreshed table for monit."""
import sys
import time

from ..manager import control


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 86400}d{seconds // 3600 % 24:02d}h"


def _bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_status(reply):
    head = (f"cluster {reply['name']}: primary pid {reply['pid']}, {reply['target']} "
            f"({reply['interface']}, sched {reply['sched']}), up {_duration(reply['uptime'])}, "
            f"{len(reply['workers'])}/{reply['instances']} workers")
    if reply.get("busy"):
        head += f", {reply['busy']} in progress"
    columns = ("id", "pid", "state", "uptime", "restarts", "requests", "in-flight", "rss")
    rows = [[str(w["id"]), str(w["pid"]), w["state"], _duration(w["uptime"]), str(w["restarts"]),
             str(w["requests"]), str(w["inflight"]), _bytes(w["rss"])] for w in reply["workers"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(v.rjust(w) if i not in (2,) else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def format_metrics(reply):
    """Prometheus text exposition (version 0.0.4)."""
    name = reply["name"]
    cluster_label = f'cluster="{name}"'
    lines = []

    def metric(metric_name, kind, help_text, samples):
        lines.append(f"# HELP {metric_name} {help_text}")
        lines.append(f"# TYPE {metric_name} {kind}")
        for labels, value in samples:
            lines.append(f"{metric_name}{{{labels}}} {value}")

    workers = reply["workers"]

    def per_worker(key):
        return [(f'{cluster_label},worker="{w["id"]}",pid="{w["pid"]}"', w[key] if w[key] is not None else 0)
                for w in workers]
    metric("pyclusterc_workers", "gauge", "Live worker processes.", [(cluster_label, len(workers))])
    metric("pyclusterc_workers_wanted", "gauge", "Worker count the primary keeps.",
           [(cluster_label, reply["instances"])])
    metric("pyclusterc_uptime_seconds", "gauge", "Seconds since the primary started.",
           [(cluster_label, round(reply["uptime"], 3))])
    metric("pyclusterc_restarts_total", "counter", "Workers started again after a crash or a limit.",
           [(cluster_label, reply["restarts"])])
    metric("pyclusterc_reloads_total", "counter", "Rolling reloads and restarts completed.",
           [(cluster_label, reply["reloads"])])
    metric("pyclusterc_worker_requests_total", "counter", "Requests served (scoreboard).", per_worker("requests"))
    metric("pyclusterc_worker_inflight_requests", "gauge", "Requests being served now.", per_worker("inflight"))
    metric("pyclusterc_worker_open_connections", "gauge", "Open client connections.", per_worker("connections"))
    metric("pyclusterc_worker_resident_memory_bytes", "gauge", "Resident set size.", per_worker("rss"))
    metric("pyclusterc_worker_uptime_seconds", "gauge", "Seconds since the worker started.",
           [(labels, round(value, 3)) for labels, value in per_worker("uptime")])
    metric("pyclusterc_worker_restarts", "gauge", "Restarts of this worker's slot.", per_worker("restarts"))
    return "\n".join(lines) + "\n"


def monit(name, interval=1.0, once=False, out=None):
    """Refresh the status table until Ctrl-C (or once)."""
    out = out or sys.stdout
    clear = "" if once or not out.isatty() else "\x1b[H\x1b[2J"
    while True:
        text = format_status(control.request(name, "status", timeout=10.0))
        out.write(clear + text + "\n")
        out.flush()
        if once:
            return
        time.sleep(interval)
