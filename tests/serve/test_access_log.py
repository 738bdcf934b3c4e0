"""serve.responses.AccessLog: lines go into one C buffer (csrc/pc_lines.h) that WSGI's
request threads and ASGI's loops add to while a flush takes from it, and none is lost,
cut or written twice."""
import os
import sys
import threading
import time

import pytest

from pyclusterc.cluster.scoreboard import SLOT_BYTES, STATUS_CLASSES, U64_DURATION_US, U64_STATUS, ScoreSlot
from pyclusterc.serve.responses import BATCH_BYTES, AccessLog, add_request
from pyclusterc.shared.buffer import SharedBuffer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _add_from_threads_while_flushing(log, threads, add):
    """add(index) on `threads` threads while another flushes all the while; then the
    last flush. Threads switch as often as they can, so that races show."""
    done = threading.Event()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def flush():
            while not done.is_set():
                log.flush()
        flusher = threading.Thread(target=flush)
        flusher.start()
        adders = [threading.Thread(target=add, args=(i,)) for i in range(threads)]
        for thread in adders:
            thread.start()
        for thread in adders:
            thread.join()
        done.set()
        flusher.join()
    finally:
        sys.setswitchinterval(old_interval)
    log.flush()


def test_threads_adding_while_others_flush_lose_no_line():
    written = []
    log = AccessLog(None, write=written.append)
    threads, per_thread = 8, 5000

    def add(index):
        for n in range(per_thread):
            log.add(f"{index}:{n}")
    _add_from_threads_while_flushing(log, threads, add)
    lines = b"".join(written).decode().splitlines()
    assert len(lines) == threads * per_thread
    assert set(lines) == {f"{i}:{n}" for i in range(threads) for n in range(per_thread)}
    for i in range(threads):  # one thread's lines keep their order
        mine = [int(line.split(":")[1]) for line in lines if line.startswith(f"{i}:")]
        assert mine == sorted(mine)


def test_a_format_with_a_duration():
    written = []
    scope = {"client": ("10.0.0.1", 5000), "method": "GET", "path": "/a b", "query_string": b"x=1",
             "http_version": "1.1", "headers": []}
    assert not AccessLog(None).needs_duration
    assert AccessLog(None).default_line  # the servers add it with add_request
    timed = AccessLog('%(r)s %(s)s %(D)s', write=written.append)
    assert timed.needs_duration and not timed.default_line
    # started as the servers pass it (time.monotonic() at the request's start): the
    # line prints the time since then, in µs for %(D)s.
    timed.asgi(scope, 200, 13, time.monotonic() - 0.25)
    timed.wsgi({"REMOTE_ADDR": "10.0.0.2", "REQUEST_METHOD": "POST", "SCRIPT_NAME": "/app", "PATH_INFO": "/x",
                "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.0"}, "201 Created", 2, 0)
    timed.flush()
    first, second = b"".join(written).decode().splitlines()
    request, status, micros = first.rsplit(" ", 2)
    assert (request, status) == ("GET /a b?x=1 HTTP/1.1", "200")
    assert 250_000 <= int(micros) < 250_000 + 5_000_000
    assert second == "POST /app/x HTTP/1.0 201 0"


def _default_lines(log):
    written = []
    log.write = written.append
    log.flush()
    return b"".join(written)


def test_the_default_line_ends_with_the_status_as_a_number():
    # An IntEnum status (http.HTTPStatus, Starlette's constants) is its number; a WSGI
    # app may send any three digits, or worse.
    from http import HTTPStatus
    log = AccessLog(None)
    prefix = AccessLog.client_prefix("10.0.0.1")
    assert prefix == b'10.0.0.1 - "'
    assert AccessLog.client_prefix(None) == b'- - "'
    raw = b"GET /x?y HTTP/1.1\r\nHost: t\r\n\r\n"
    for status in (HTTPStatus.NOT_FOUND, 100, 599, 200, 999, 0, -7, 2**31 - 1, -2**31):
        assert add_request(log.lines, prefix, raw, status, 0.0) == 0
    assert _default_lines(log).decode().splitlines() == [
        f'10.0.0.1 - "GET /x?y HTTP/1.1" {status}'
        for status in (404, 100, 599, 200, 999, 0, -7, 2**31 - 1, -2**31)]
    with pytest.raises(OverflowError):  # cffi refuses it: the servers' statuses are int32
        add_request(log.lines, prefix, raw, 2**31, 0.0)


def test_the_request_line_ends_at_the_first_cr_or_lf():
    log = AccessLog(None)
    for head in (b"GET /a HTTP/1.1\r\n\r\n", b"GET /a HTTP/1.1\nX: y\n\n", b"GET /a HTTP/1.1"):
        add_request(log.lines, b'- - "', head, 200, 0.0)
    assert _default_lines(log) == b'- - "GET /a HTTP/1.1" 200\n' * 3


def test_an_add_says_when_to_flush_and_records_into_a_slot():
    log = AccessLog(None)
    line = b'- - "POST /p HTTP/1.0" 201\n'
    raw = b"POST /p HTTP/1.0\r\n\r\n"
    slot = ScoreSlot(SharedBuffer(SLOT_BYTES), 0)
    assert add_request(log.lines, b'- - "', raw, 201, 0.0) == 0  # not recorded: no slot yet
    log.record_into(slot.pointer)
    assert add_request(log.lines, b'- - "', raw, 201, time.monotonic() - 0.5) == 0
    assert [slot.u64.load(U64_STATUS + i) for i in range(len(STATUS_CLASSES))] == [0, 1, 0, 0, 0, 0]
    assert 500_000 <= slot.u64.load(U64_DURATION_US) < 5_500_000  # about 0.5 s
    # Once BATCH_BYTES are pending, each add returns 1 until the flush.
    adds = [add_request(log.lines, b'- - "', raw, 201, 0.0) for _ in range(BATCH_BYTES // len(line))]
    first = adds.index(1)
    assert (first + 3) * len(line) >= BATCH_BYTES > (first + 2) * len(line)
    assert set(adds[first:]) == {1}
    assert _default_lines(log) == line * (len(adds) + 2)
    assert add_request(log.lines, b'- - "', raw, 201, 0.0) == 0  # the flush took them all


def test_threads_adding_default_lines_while_others_flush_lose_none():
    # add_request from 8 threads (WSGI's request threads, ASGI's loops) with a flush
    # running all the while, and past BATCH_BYTES: every line once, whole, in order.
    log = AccessLog(None)
    written = []
    log.write = written.append
    threads, per_thread = 8, 4000

    def add(index):
        prefix = AccessLog.client_prefix(f"10.0.0.{index}")
        for n in range(per_thread):
            raw = b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % n
            if add_request(log.lines, prefix, raw, 200, 0.0):
                log.flush()
    _add_from_threads_while_flushing(log, threads, add)
    assert all(batch.endswith(b"\n") for batch in written)  # a batch ends with a whole line
    lines = b"".join(written).decode().splitlines()
    assert len(lines) == threads * per_thread
    for i in range(threads):
        mine = [line for line in lines if line.startswith(f"10.0.0.{i} ")]
        assert mine == [f'10.0.0.{i} - "GET /{n} HTTP/1.1" 200' for n in range(per_thread)]


# One keep-alive connection, pipelined: the default line prints each request line as
# it was sent (the query string, a percent-encoded path, a method llhttp does not know,
# raw UTF-8), and an app's error is logged with the 500 it was answered with.
_REQUESTS = [
    (b"GET /a%20b?x=1&y=2 HTTP/1.1\r\nHost: t\r\n\r\n", b'"GET /a%20b?x=1&y=2 HTTP/1.1" 200'),
    (b"FROB /f HTTP/1.1\r\nHost: t\r\n\r\n", b'"FROB /f HTTP/1.1" 200'),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", b'"GET /caf\xc3\xa9 HTTP/1.1" 200'),
    (b"POST /p?q HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", b'"POST /p?q HTTP/1.1" 200'),
    (b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n", b'"GET /raise HTTP/1.1" 500'),
]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_the_default_line_is_the_request_line_as_sent(interface):
    with DirectServer(interface, settings={"access_log": True, "log_level": "info"}) as server:
        with connect(server.port) as sock:
            sock.sendall(b"".join(request for request, _ in _REQUESTS))
            responses = Responses(sock)
            statuses = [responses.next()[0] for _ in _REQUESTS]
        assert statuses == [200, 200, 200, 200, 500]
        assert server.stop() == 0
        out = server.proc.stdout.read()
    lines = [line for line in out.splitlines() if line.startswith(b"127.0.0.1 - ")]
    assert lines == [b"127.0.0.1 - " + expected for _, expected in _REQUESTS]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_concurrent_clients_get_whole_lines(interface):
    # WSGI's request threads add to one buffer at once, and two ASGI loops (--threads 2)
    # write their batches to one fd: no line is split, mixed with another, lost or doubled.
    clients, per_client = 8, 60
    with DirectServer(interface, settings={"access_log": True, "log_level": "info"},
                      threads=8 if interface == "wsgi" else 2) as server:
        def run(index):
            with connect(server.port) as sock:
                responses = Responses(sock)
                for n in range(per_client):
                    sock.sendall(b"GET /c?client=%d&n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (index, n))
                    assert responses.next()[0] == 200
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert server.stop() == 0
        out = server.proc.stdout.read()
    lines = [line for line in out.splitlines() if line != b"READY"]
    expected = {b'127.0.0.1 - "GET /c?client=%d&n=%d HTTP/1.1" 200' % (i, n)
                for i in range(clients) for n in range(per_client)}
    assert len(lines) == len(expected) and set(lines) == expected
