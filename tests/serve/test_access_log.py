"""serve.responses.AccessLog: lines are added without a lock (WSGI's request threads add,
the acceptor and a full batch flush), and none is lost or written twice."""
import sys
import threading
import time

import pytest

from pyclusterc.serve.responses import AccessLog

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
    lines = "".join(written).splitlines()
    assert len(lines) == threads * per_thread
    assert set(lines) == {f"{i}:{n}" for i in range(threads) for n in range(per_thread)}
    for i in range(threads):  # one thread's lines keep their order
        mine = [int(line.split(":")[1]) for line in lines if line.startswith(f"{i}:")]
        assert mine == sorted(mine)


def test_the_default_lines_and_a_format_with_a_duration():
    written = []
    log = AccessLog(None, write=written.append)
    assert not log.needs_duration
    scope = {"client": ("10.0.0.1", 5000), "method": "GET", "path": "/a b", "query_string": b"x=1",
             "http_version": "1.1", "headers": []}
    log.asgi(scope, 200, 13, 0)
    log.asgi({**scope, "client": None}, 404, 0, 0)
    log.wsgi({"REMOTE_ADDR": "10.0.0.2", "REQUEST_METHOD": "POST", "SCRIPT_NAME": "/app", "PATH_INFO": "/x",
              "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.0"}, "201 Created", 2, 0)
    log.flush()
    assert "".join(written).splitlines() == ['10.0.0.1 - "GET /a b HTTP/1.1" 200', '- - "GET /a b HTTP/1.1" 404',
                                             '10.0.0.2 - "POST /app/x HTTP/1.0" 201']
    timed = AccessLog('%(r)s %(s)s %(D)s', write=written.append)
    assert timed.needs_duration
    written.clear()
    # started_ns as the servers pass it (time.monotonic_ns() at the request's start):
    # the line prints the time since then, in µs for %(D)s.
    timed.asgi(scope, 200, 13, time.monotonic_ns() - 250_000_000)
    timed.flush()
    request, status, micros = written[0].rsplit(" ", 2)
    assert (request, status) == ("GET /a b?x=1 HTTP/1.1", "200")
    assert 250_000 <= int(micros) < 250_000 + 5_000_000


def test_asgi_statuses_print_as_their_numbers():
    # The default ASGI line looks its status up (100 to 599, as uvicorn's status lines);
    # an IntEnum status (http.HTTPStatus, what Starlette's constants are) is the same key.
    from http import HTTPStatus
    written = []
    log = AccessLog(None, write=written.append)
    scope = {"client": ("10.0.0.1", 5000), "method": "GET", "path": "/", "query_string": b"",
             "http_version": "1.1", "headers": []}
    for status in (HTTPStatus.NOT_FOUND, 100, 599, HTTPStatus.OK):
        log.asgi(scope, status, 0, 0)
    log.flush()
    assert [line.rsplit(" ", 1)[1] for line in "".join(written).splitlines()] == ["404", "100", "599", "200"]
