"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's."""
import os
import socket
import subprocess
import sys
import time

import pytest

from pyclusterc.manager.sdnotify import Notifier

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def fields(datagram):
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_messages_in_order_and_environment_cleared(notify_socket):
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "OTHER": "1"}
    n = Notifier.from_environ(env)
    assert n.enabled and env == {"OTHER": "1"}  # workers must not inherit them
    assert n.watchdog_interval() == 2.0
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.ready("2 workers\nready")
    assert n.reloading()
    assert n.ready("2 workers ready")
    assert n.status("3 workers")
    assert n.watchdog()
    assert n.stopping()
    got = [fields(sock.recv(4096)) for _ in range(6)]
    assert got[0] == {"READY": "1", "STATUS": "2 workers ready"}
    assert got[1]["RELOADING"] == "1" and int(got[1]["MONOTONIC_USEC"]) >= before
    assert got[2]["READY"] == "1"
    assert got[3] == {"STATUS": "3 workers"}
    assert got[4] == {"WATCHDOG": "1"}
    assert got[5]["STOPPING"] == "1"
    assert n.sent == 6 and n.errors == 0
    n.close()


def test_abstract_socket():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"pyclusterc-test-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_no_socket_is_a_no_op_and_watchdog_pid_is_respected(notify_socket):
    _, path = notify_socket
    n = Notifier.from_environ({})
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False and n.watchdog_interval() is None
    other = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                                   "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.enabled and other.watchdog_interval() is None and other.watchdog() is False
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:999"}).enabled
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative"}).enabled


def test_send_failure_never_raises(tmp_path):
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False and n.stopping() is False
    assert n.errors == 2


def test_from_the_real_environment_in_a_child(notify_socket):
    """A process started the way systemd starts ExecStart: NOTIFY_SOCKET in its environment."""
    sock, path = notify_socket
    code = ("import os; from pyclusterc.manager.sdnotify import Notifier; n = Notifier.from_environ(); "
            "assert 'NOTIFY_SOCKET' not in os.environ; n.ready('1 worker'); n.stopping()")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "NOTIFY_SOCKET": path},
                   check=True, timeout=20)
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "1 worker"}
    assert fields(sock.recv(4096))["STOPPING"] == "1"
