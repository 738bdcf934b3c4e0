"""serve.responses.AccessLog: lines are added without a lock (WSGI's request threads add,
the acceptor and a full batch flush), and none is lost or written twice."""
import os
import sys
import threading
import time

import pytest

from pyclusterc.serve.responses import STATUS_END, AccessLog

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_threads_adding_while_others_flush_lose_no_line():
    written = []
    log = AccessLog(None, write=written.append)
    threads, per_thread = 8, 5000
    done = threading.Event()
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show
    try:
        def add(index):
            for n in range(per_thread):
                log.add(f"{index}:{n}")

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
    assert AccessLog(None).buffer is not None  # the default line: the servers add it inline
    timed = AccessLog('%(r)s %(s)s %(D)s', write=written.append)
    assert timed.needs_duration and timed.buffer is None
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


def test_the_default_line_ends_with_the_status_as_a_number():
    # What the servers append: STATUS_END by the status (an IntEnum status, as
    # http.HTTPStatus and Starlette's constants, is the same key; a status outside
    # 100-599 that a WSGI app sent is formatted when seen).
    from http import HTTPStatus
    assert [STATUS_END[status] for status in (HTTPStatus.NOT_FOUND, 100, 599, 200, 999)] == [
        b'" 404\n', b'" 100\n', b'" 599\n', b'" 200\n', b'" 999\n']
    assert AccessLog.client_prefix("10.0.0.1") == b'10.0.0.1 - "'
    assert AccessLog.client_prefix(None) == b'- - "'


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
