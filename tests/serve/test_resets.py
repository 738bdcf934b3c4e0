"""Clients that reset their connections (close with SO_LINGER 0, as wrk does when its run
ends, and as any client killed mid-request does): the worker drops each one and serves
on. Before, a reset read by the WSGI acceptor raised ConnectionResetError out of its loop
and the worker died: a benchmark run then measured a cluster down to one worker."""
import os
import socket
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect, get  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_resets_at_every_stage_leave_the_worker_serving(interface):
    with DirectServer(interface) as server:
        for _ in range(3):
            idle = []  # kept-alive after one answered request: the acceptor waits on them
            for _ in range(20):
                sock = connect(server.port)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert Responses(sock).next()[0] == 200
                idle.append(sock)
            heads = [connect(server.port) for _ in range(10)]
            for sock in heads:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: ")  # a head in progress
            bodies = [connect(server.port) for _ in range(10)]
            for sock in bodies:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
            unread = [connect(server.port) for _ in range(10)]
            for sock in unread:  # a whole request, then gone before reading the answer
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.2)
            for sock in idle + heads + bodies + unread:
                _reset(sock)
            time.sleep(0.3)
            assert server.proc.poll() is None, "the server process died on a client reset"
            assert get(server.port)[0] == 200
    assert b"Traceback" not in server.stderr, server.stderr.decode(errors="replace")[-2000:]
