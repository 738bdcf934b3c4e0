"""monit in a pseudo-terminal (draws the table and the log tail, exits on q), the status
table's CPU column and status --json, over real clusters."""
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from pyclusterc.cli.monit import CpuMeter, LogTail, _sparkline, format_status, render, status_json
from procs import free_port, get
from apphome import home  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(90)


def fake_status(pid=None):
    pid = pid or os.getpid()
    return {"name": "t", "pid": pid, "target": "app:app", "interface": "asgi", "sched": "rr",
            "uptime": 75.0, "instances": 2, "restarts": 1, "reloads": 0, "busy": "",
            "workers": [{"id": 0, "pid": pid, "state": "listening", "uptime": 5, "restarts": 0,
                         "requests": 10, "inflight": 1, "connections": 1, "rss": 3 << 20}]}


def test_format_status_has_a_cpu_column_and_json_parses():
    text = format_status(fake_status(), {os.getpid(): 12.345})
    lines = text.splitlines()
    assert lines[1].split() == ["id", "pid", "state", "cpu", "uptime", "restarts", "requests", "in-flight", "rss"]
    assert lines[2].split()[3] == "12.3%" and "(cpu 12.3%)" in lines[0] and "up 1m15s" in lines[0]
    assert format_status(fake_status()).splitlines()[2].split()[3] == "-"
    data = json.loads(status_json(fake_status(), {os.getpid(): 50.0}))
    assert data["workers"][0]["cpu_percent"] == 50.0 and data["workers"][0]["cpu_seconds"] >= 0
    assert data["cpu_percent"] == 50.0 and "ok" not in data


def test_cpu_meter_measures_a_busy_loop():
    meter = CpuMeter()
    meter.sample([os.getpid()])
    cpu0, wall0 = sum(os.times()[:2]), time.monotonic()
    while sum(os.times()[:2]) - cpu0 < 0.3:  # 0.3 s of CPU, however long a busy machine takes
        pass
    expected = (sum(os.times()[:2]) - cpu0) / (time.monotonic() - wall0) * 100
    measured = meter.sample([os.getpid()])[os.getpid()]
    assert measured == pytest.approx(expected, abs=10) and measured > 5  # /proc agrees with times()
    assert meter.sample([2 ** 22 + 3]) == {}


def test_render_and_sparkline():
    from rich.console import Console
    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(render(fake_status(), {0: [0, 5, 10]}, {}, ["line one", "line two"]))
    text = console.export_text()
    assert "pyclusterc monit" in text and "primary" in text and "line two" in text and "▁" not in _sparkline([0])
    assert _sparkline([0, 5, 10]) == " ▄█"
    console.print(render(None, {}, {}, [], error="no running cluster named 't'"))
    assert "no running cluster named 't'" in console.export_text()


def test_log_tail_follows_and_survives_rotation(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("old 1\nold 2\n")
    tail = LogTail([str(path)], initial=1)
    assert tail.initial == ["old 2"] and tail() == []
    with open(path, "a") as f:
        f.write("new 1\npartial")
    assert tail() == ["new 1"]
    os.rename(path, tmp_path / "x.log.1")
    path.write_text("rotated\n")
    assert tail() == ["rotated"]


def read_screen(fd, until, timeout=20):
    data = b""
    deadline = time.monotonic() + timeout
    while not all(word in data for word in until):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"screen never showed {until}: {data[-3000:]!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def test_monit_in_a_pty_draws_and_quits_on_q(home):
    port = free_port()
    home.ok("start", "plain_wsgi:app", "-i", 2, "-b", f"127.0.0.1:{port}", "--name", "mon")
    for _ in range(3):
        get(port)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "pyclusterc.cli.monit", "mon", "--interval", "0.3"],
                            stdin=slave, stdout=slave, stderr=slave, env={**home.env, "TERM": "xterm-256color"},
                            start_new_session=True)
    os.close(slave)
    try:
        screen = read_screen(master, [b"pyclusterc monit", b"primary", b"history", b"ready, 2 workers", b"q quits"])
        assert b"\x1b[?1049h" in screen  # the alternate screen: the user's terminal is left as it was
        get(port, "/after-start")  # new requests show up in the table's next frames
        read_screen(master, [b"listening"])
        os.write(master, b"q")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)


def test_monit_once_without_a_terminal(home):
    port = free_port()
    home.ok("start", "plain_wsgi:app", "-i", 1, "-b", f"127.0.0.1:{port}", "--name", "once")
    out = subprocess.run([sys.executable, "-m", "pyclusterc.cli.monit", "once", "--once"], env=home.env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.splitlines()[1].split()[3] == "cpu"
    out = subprocess.run([sys.executable, "-m", "pyclusterc.cli.monit", "nope", "--once"], env=home.env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("pyclusterc: error: no running cluster named 'nope'")
