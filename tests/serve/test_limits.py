"""Hostile and heavy clients, both servers: slowloris beside normal clients, a 16 MiB
header line, a body over --limit-request-body, the whole-head deadline, the
concurrency limit. Servers run in a child (tests/serve/direct.py), clients here."""
import collections
import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect, get, rss_kib  # noqa: E402

pytestmark = pytest.mark.timeout(120)

INTERFACES = ["wsgi", "asgi"]


@pytest.mark.parametrize("interface", INTERFACES)
def test_slowloris_does_not_hold_up_normal_clients(interface):
    """50 connections trickling a head at 1 byte/s, --threads 2: normal requests
    beside them keep a p99 under 200 ms (before, WSGI gave each a pool thread)."""
    with DirectServer(interface, threads=2) as server:
        slow = [connect(server.port) for _ in range(50)]
        stop = threading.Event()

        def trickle():
            data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
            for i in range(len(data)):
                for sock in slow:
                    try:
                        sock.send(data[i:i + 1])
                    except OSError:
                        pass
                if stop.wait(1.0):
                    return
        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            time.sleep(1.5)  # every slow connection has started its head
            latencies = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                started = time.monotonic()
                status = get(server.port, timeout=5)[0]
                latencies.append(time.monotonic() - started)
                assert status == 200
                time.sleep(0.02)
        finally:
            stop.set()
            trickler.join()
            for sock in slow:
                sock.close()
        latencies.sort()
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
        assert len(latencies) > 50 and p99 < 0.2, (len(latencies), p99, latencies[-5:])


@pytest.mark.parametrize("interface", INTERFACES)
def test_16_mib_header_line_gets_431_with_memory_bounded(interface):
    with DirectServer(interface) as server:
        for _ in range(20):
            assert get(server.port)[0] == 200  # warm: first-request allocations done
        before = rss_kib(server.pid)
        with connect(server.port) as sock:
            sent = [0]

            def send_line():
                try:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    piece = b"a" * 65536
                    for _ in range(256):  # 16 MiB
                        sock.sendall(piece)
                        sent[0] += len(piece)
                except OSError:
                    pass  # the server closed after its 431: the rest is not read
            sender = threading.Thread(target=send_line)
            sender.start()
            got = Responses(sock).next()
            sender.join(30)
        assert got is None or got[0] == 431, got
        assert sent[0] < 8 << 20  # refused at the limit, not after reading the line
        grown = rss_kib(server.pid) - before
        assert grown < 2048, f"RSS grew {grown} KiB"
        assert get(server.port)[0] == 200


@pytest.mark.parametrize("interface", INTERFACES)
def test_body_over_the_limit_gets_413_before_it_is_sent(interface):
    with DirectServer(interface, settings={"limit_request_body": 1 << 20}) as server:
        with connect(server.port) as sock:
            # The head only: the 413 must come without the server waiting for the body.
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 << 20))
            got = Responses(sock).next()
            assert got[0] == 413
        with connect(server.port) as sock:  # chunked: refused once past the limit
            def send_chunks():
                try:
                    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(160):  # 10 MiB
                        sock.sendall(b"10000\r\n" + b"b" * 65536 + b"\r\n")
                except OSError:
                    pass
            sender = threading.Thread(target=send_chunks)
            sender.start()
            got = Responses(sock).next()
            sender.join(30)
            assert got is not None and got[0] == 413
        body = b"c" * 1000
        with connect(server.port) as sock:  # under the limit: served
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body)
            assert Responses(sock).next()[0] == 200


@pytest.mark.parametrize("interface", INTERFACES)
def test_header_timeout_is_for_the_whole_head(interface):
    """A head trickled a byte at a time gets 408 at --header-timeout, however often
    bytes come; a connection that sends nothing is closed."""
    with DirectServer(interface, settings={"header_timeout": 1.0}) as server:
        with connect(server.port) as sock:
            started = time.monotonic()
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.1)
            sock.settimeout(5)
            got = Responses(sock).next()
            assert got is not None and got[0] == 408
            assert 0.9 < time.monotonic() - started < 3.5
        with connect(server.port) as sock:
            started = time.monotonic()
            assert Responses(sock).closed(timeout=5)
            assert time.monotonic() - started < 3
        assert get(server.port)[0] == 200


@pytest.mark.parametrize("interface", INTERFACES)
def test_limit_concurrency_answers_503_beyond_it(interface):
    with DirectServer(interface, threads=4, settings={"limit_concurrency": 1}) as server:
        results = {}

        def slow():
            results["slow"] = get(server.port, "/slow?s=1.5")[0]
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        assert get(server.port)[0] == 503
        thread.join()
        assert results["slow"] == 200
        assert get(server.port)[0] == 200


@pytest.mark.parametrize("interface", INTERFACES)
def test_limit_concurrency_never_refuses_a_client_its_own_next_request(interface):
    """One client at a time under --limit-concurrency 1: requests back to back on a
    kept-alive connection, pipelined pairs, and a new connection right after each
    response. None may meet a 503 caused by the request it has just been answered for."""
    with DirectServer(interface, threads=4, settings={"limit_concurrency": 1}) as server:
        statuses = []
        with connect(server.port) as sock:
            responses = Responses(sock)
            for _ in range(300):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                statuses.append(responses.next()[0])
            for _ in range(50):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
                statuses += [responses.next()[0], responses.next()[0]]
        for _ in range(150):
            statuses.append(get(server.port)[0])
        assert [s for s in statuses if s != 200] == [], collections.Counter(statuses)


@pytest.mark.parametrize("interface", INTERFACES)
def test_too_many_fields_and_long_request_line(interface):
    with DirectServer(interface, settings={"limit_request_fields": 5, "limit_request_line": 100}) as server:
        fields = b"".join(b"X-%d: v\r\n" % i for i in range(6))
        with connect(server.port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
            assert Responses(sock).next()[0] == 431
        with connect(server.port) as sock:
            sock.sendall(b"GET /" + b"p" * 200 + b" HTTP/1.1\r\n\r\n")
            assert Responses(sock).next()[0] == 414
        with connect(server.port) as sock:  # refused before the line ends
            sock.sendall(b"GET /" + b"p" * 200)
            assert Responses(sock).next()[0] == 414
        assert get(server.port)[0] == 200
