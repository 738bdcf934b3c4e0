"""A request line llhttp reads as HTTP/0.9 ("GET /x" ended by a bare LF, the next line
then a header) is refused with a 400 by both servers, not served as the HTTP/1.1 that
ends the first CRLF line; the server keeps serving."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect, get  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_bare_lf_request_line_is_refused(interface):
    with DirectServer(interface) as server:
        for request in (b"GET /x\nFoo: bar HTTP/1.1\r\nHost: t\r\n\r\n",
                        b"GET /x\nHost: t HTTP/1.0\r\n\r\n"):
            with connect(server.port) as sock:
                sock.sendall(request)
                response = Responses(sock).next()
                assert response is not None and response[0] == 400, response
        status, _, _ = get(server.port, "/after")
        assert status == 200
