"""``pyclusterc monit`` as a terminal UI (rich's Live on the alternate screen), and the
``status`` presentation: the table with a CPU column, and ``status --json``.

    status_source() ─► status dict ─┐   every --interval seconds
    log_source()    ─► new lines  ──┼─► render() ─► rich Live (alternate screen)
    CpuMeter(/proc/PID/stat)      ──┘   keys: q (or Ctrl-C) quits

What the caller (the CLI) must do:

- ``monit NAME [--interval S] [--once]``: ``return main(name, interval, once)``. On a
  terminal it runs the UI until ``q``; with ``--once`` or when stdout is not a terminal it
  prints ``format_status`` once (or every interval, without clearing, when not --once).
  The log panel tails the app's log files when NAME is a background app
  (``pyclusterc start``), else it says there are none.
- ``status NAME [--json]``: ``print(status_text(name, as_json=args.json))`` — it samples
  CPU over 0.25 s, so the CPU column is current, not a lifetime average.
- Elsewhere: ``run_monit(status_source, log_source, interval)`` with any callables:
  ``status_source()`` returns the status dict (``ProcessManager.status()`` shape) or raises;
  ``log_source()`` returns the list of new log lines since the last call.
"""
import collections
import json
import os
import select
import sys
import termios
import time
import tty

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..manager import control
from ..manager.metrics import process_cpu_seconds, process_rss

__all__ = ["format_status", "status_json", "status_text", "CpuMeter", "LogTail", "render",
           "run_monit", "main"]

_SPARKS = " ▁▂▃▄▅▆▇█"
_HISTORY = 40  # samples per sparkline


class CpuMeter:
    """CPU % of one core per pid between two ``sample()`` calls (the first call gives the
    average since each process started, as ps does)."""

    def __init__(self):
        self.last = {}  # pid -> (cpu seconds, monotonic time)

    def sample(self, pids):
        now = time.monotonic()
        result = {}
        seen = {}
        for pid in pids:
            cpu = process_cpu_seconds(pid)
            if cpu is None:
                continue
            seen[pid] = (cpu, now)
            if pid in self.last:
                cpu0, t0 = self.last[pid]
                result[pid] = max(0.0, (cpu - cpu0) / max(now - t0, 1e-6) * 100)
            else:
                result[pid] = cpu / max(_process_age(pid), 1e-6) * 100
        self.last = seen
        return result


def _process_age(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            start = int(f.read().rsplit(b")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return 0.0


def _pids(reply):
    return [reply["pid"], *(w["pid"] for w in reply.get("workers", ()))]


# ---- status: text and JSON -----------------------------------------------------------

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


def _pct(cpu, pid):
    value = (cpu or {}).get(pid)
    return "-" if value is None else f"{value:.1f}%"


def format_status(reply, cpu=None):
    """The status table; ``cpu`` maps pid -> CPU % (a column of "-" without it)."""
    head = (f"cluster {reply['name']}: primary pid {reply['pid']} (cpu {_pct(cpu, reply['pid'])}), "
            f"{reply['target']} ({reply['interface']}, sched {reply['sched']}), up {_duration(reply['uptime'])}, "
            f"{len(reply['workers'])}/{reply['instances']} workers")
    if reply.get("busy"):
        head += f", {reply['busy']} in progress"
    columns = ("id", "pid", "state", "cpu", "uptime", "restarts", "requests", "in-flight", "rss")
    rows = [[str(w["id"]), str(w["pid"]), w["state"], _pct(cpu, w["pid"]), _duration(w["uptime"]),
             str(w["restarts"]), str(w["requests"]), str(w["inflight"]), _bytes(w["rss"])]
            for w in reply["workers"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i == 2 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def status_json(reply, cpu=None):
    """The status dict as JSON, with ``cpu_percent`` and ``cpu_seconds`` per process."""
    out = dict(reply)
    out.pop("ok", None)
    out["cpu_percent"] = (cpu or {}).get(reply["pid"])
    out["cpu_seconds"] = process_cpu_seconds(reply["pid"])
    out["workers"] = [{**w, "cpu_percent": (cpu or {}).get(w["pid"]),
                       "cpu_seconds": process_cpu_seconds(w["pid"])} for w in reply["workers"]]
    return json.dumps(out, indent=1)


def status_text(name, as_json=False, sample=0.25):
    """`pyclusterc status NAME [--json]`: CPU sampled over ``sample`` seconds."""
    meter = CpuMeter()
    reply = control.request(name, "status", timeout=10.0)
    meter.sample(_pids(reply))
    if sample:
        time.sleep(sample)
    cpu = meter.sample(_pids(reply))
    return status_json(reply, cpu) if as_json else format_status(reply, cpu)


# ---- the UI ------------------------------------------------------------------------------

class LogTail:
    """A log source: each call returns the lines appended to ``paths`` since the last one
    (a moved or truncated file is read again from its start)."""

    def __init__(self, paths, initial=10):
        from ..manager.apps import tail_lines
        self.paths = list(paths)
        self.initial = []  # the last lines already there when monit started
        self.state = {}
        for path in self.paths:
            self.initial += tail_lines(path, initial)
            try:
                info = os.stat(path)
                self.state[path] = (info.st_ino, info.st_size)
            except FileNotFoundError:
                self.state[path] = (None, 0)

    def __call__(self):
        new = []
        for path, (inode, offset) in self.state.items():
            try:
                info = os.stat(path)
            except FileNotFoundError:
                continue
            if info.st_ino != inode or info.st_size < offset:
                inode, offset = info.st_ino, 0
            if info.st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(1 << 20)
                end = data.rfind(b"\n") + 1  # whole lines only; the rest waits
                offset += end
                new += data[:end].decode("utf-8", "replace").splitlines()
            self.state[path] = (inode, offset)
        return new


def _sparkline(values):
    top = max(values, default=0) or 1
    return "".join(_SPARKS[min(len(_SPARKS) - 1, round(v / top * (len(_SPARKS) - 1)))] for v in values)


def render(reply, rates, cpu, log_lines, error=None, height=40):
    """One frame: header, the process table, the log tail."""
    if reply is None:
        header = Text(f"pyclusterc monit — {error or 'waiting for the cluster'}", style="bold red")
        return Group(header, Text("q quits", style="dim"))
    total_rate = sum(r[-1] for r in rates.values() if r)
    header = Text.assemble(
        ("pyclusterc monit ", "bold"), (f"{reply['name']}", "bold cyan"),
        f"  {reply['target']} ({reply['interface']}, sched {reply['sched']})  up {_duration(reply['uptime'])}  "
        f"{len(reply['workers'])}/{reply['instances']} workers  {total_rate:.1f} req/s  ",
        (error or "", "red"), ("q quits", "dim"))
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    for column, justify in (("id", "right"), ("pid", "right"), ("state", "left"), ("cpu", "right"),
                            ("memory", "right"), ("uptime", "right"), ("restarts", "right"),
                            ("requests", "right"), ("in-flight", "right"), ("req/s", "right"),
                            ("history", "left")):
        table.add_column(column, justify=justify, no_wrap=True)
    table.add_row("-", str(reply["pid"]), "primary", _pct(cpu, reply["pid"]), _bytes(process_rss(reply["pid"])),
                  _duration(reply["uptime"]), str(reply.get("restarts", 0)), "", "", "", "")
    for w in reply["workers"]:
        history = rates.get(w["id"], ())
        table.add_row(str(w["id"]), str(w["pid"]), w["state"], _pct(cpu, w["pid"]), _bytes(w["rss"]),
                      _duration(w["uptime"]), str(w["restarts"]), str(w["requests"]), str(w["inflight"]),
                      f"{history[-1]:.1f}" if history else "-", Text(_sparkline(history), style="green"))
    room = max(3, height - len(reply["workers"]) - 10)
    logs = Text("\n".join(list(log_lines)[-room:]) if log_lines else "(no log lines)", no_wrap=True,
                overflow="ellipsis")
    return Group(header, table, Panel(logs, title="logs", title_align="left", box=box.ROUNDED))


def run_monit(status_source, log_source=None, interval=1.0, console=None, input_fd=None,
              log_lines=None):
    """The UI loop until q / Ctrl-C; returns 0."""
    console = console or Console()
    input_fd = sys.stdin.fileno() if input_fd is None else input_fd
    log_lines = log_lines if log_lines is not None else collections.deque(maxlen=200)
    rates = collections.defaultdict(lambda: collections.deque(maxlen=_HISTORY))
    meter = CpuMeter()
    last = {}  # worker id -> (requests, time)
    saved = termios.tcgetattr(input_fd) if os.isatty(input_fd) else None
    try:
        if saved is not None:
            tty.setcbreak(input_fd)  # keys arrive one by one, unechoed
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                reply, error = None, None
                try:
                    reply = status_source()
                except Exception as e:  # noqa: BLE001 - show it, keep trying: it may come back
                    error = str(e)
                cpu = {}
                if reply is not None:
                    now = time.monotonic()
                    cpu = meter.sample(_pids(reply))
                    for w in reply["workers"]:
                        if w["id"] in last:
                            requests, then = last[w["id"]]
                            rates[w["id"]].append(max(0.0, (w["requests"] - requests) / max(now - then, 1e-6)))
                        last[w["id"]] = (w["requests"], now)
                    for gone in set(rates) - {w["id"] for w in reply["workers"]}:
                        del rates[gone]
                if log_source is not None:
                    log_lines.extend(log_source())
                live.update(render(reply, rates, cpu, log_lines, error, console.size.height), refresh=True)
                if _wait_for_quit(input_fd, interval):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(input_fd, termios.TCSADRAIN, saved)


def _wait_for_quit(fd, timeout):
    """True if q (or EOF on the input) came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            return True


def main(name, interval=1.0, once=False):
    """The `monit` command (see the module docstring)."""
    from ..manager import apps
    control.check_name(name)
    if once or not sys.stdout.isatty() or not sys.stdin.isatty():
        meter = CpuMeter()
        while True:
            reply = control.request(name, "status", timeout=10.0)
            print(format_status(reply, meter.sample(_pids(reply))), flush=True)
            if once:
                return 0
            time.sleep(interval)
    paths = []
    try:
        store = apps.AppStore()
        if name in store.names():
            paths = list(store.log_paths(name))
    except apps.AppsError:
        pass
    tail = LogTail(paths) if paths else None
    lines = collections.deque(tail.initial if tail else [
        f"no log files for {name!r}: logs are kept for apps started with `pyclusterc start`"], maxlen=200)
    control.request(name, "status", timeout=10.0)  # a one-line error now, not a blank screen
    return run_monit(lambda: control.request(name, "status", timeout=5.0), tail, interval,
                     log_lines=lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(prog="pyclusterc monit")
    parser.add_argument("name", nargs="?", default="default")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--once", action="store_true")
    arguments = parser.parse_args()
    try:
        sys.exit(main(arguments.name, arguments.interval, arguments.once))
    except control.ControlError as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        sys.exit(1)
