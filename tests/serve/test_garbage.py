"""A finished connection is freed by reference counting alone, on both servers: the
connection's objects (protocol, request reader, cycle, transport) must not refer to each
other in a loop once it is closed. Before, each closed ASGI connection left about 27
objects and each WSGI one about 8 to the cyclic GC: more collections, and on a
Connection: close load ~5% more instructions per request than the code it replaced."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect, get  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CONNECTIONS = 300


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_closed_connections_leave_no_cyclic_garbage(interface):
    with DirectServer(interface, env={"PYCLUSTERC_TEST_GC_REPORT": "1"}) as server:
        for _ in range(CONNECTIONS):  # each on its own connection, closed by the server
            assert get(server.port, headers=b"Connection: close\r\n")[0] == 200
        for _ in range(CONNECTIONS // 3):  # kept alive for a few requests, closed by us
            sock = connect(server.port)
            responses = Responses(sock)
            for _ in range(3):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert responses.next()[0] == 200
            sock.close()
        assert get(server.port)[0] == 200
        assert server.stop() == 0
        out = server.proc.stdout.read().decode()
    freed = int(next(line for line in out.splitlines() if line.startswith("GC ")).split()[1])
    # Not one or more per connection (the shutdown is not counted: direct.py).
    assert freed < CONNECTIONS // 3, f"the cyclic GC freed {freed} objects for {CONNECTIONS * 4 // 3} connections"
