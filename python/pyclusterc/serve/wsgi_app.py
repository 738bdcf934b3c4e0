"""The WSGI side of one request: the environ (PEP 3333) and the response —
start_response, the write callable and the framing (length, chunked, HEAD, Date)."""
import sys
from urllib.parse import unquote_to_bytes

_NO_BODY_STATUSES = (204, 304)


def build_environ(server, conn, request):
    """The PEP 3333 environ; root_path (SCRIPT_NAME) is cut off PATH_INFO when the
    proxy left it on (gunicorn's SCRIPT_NAME rule)."""
    head = request.head
    # PATH_INFO is a path: empty for OPTIONS * and CONNECT host:port (RAW_URI has them).
    path = unquote_to_bytes(head.path) if head.path[:1] == b"/" else b""
    script_name = ""
    root = server.root_path
    if root and (path == root or path.startswith(root + b"/")):
        path = path[len(root):]
    if root:
        script_name = root.decode("latin-1")
    body = request.body
    length = 0
    if body is not None:
        length = body.tell()
        body.seek(0)
    else:
        body = _EMPTY_INPUT
    environ = {
        "REQUEST_METHOD": head.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": head.query.decode("latin-1"),
        "RAW_URI": head.target.decode("latin-1"),
        "SERVER_NAME": server.server_name,
        "SERVER_PORT": server.server_port,
        "SERVER_PROTOCOL": f"HTTP/{head.version}",
        "REMOTE_ADDR": str(conn.peer[0]),
        "REMOTE_PORT": str(conn.peer[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": server.scheme,
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in head.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        value = value.decode("latin-1")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            environ[key] = value
            continue
        if key == "TRANSFER_ENCODING" or key == "EXPECT":
            continue  # already acted on: the body is whole, the 100 was sent
        key = "HTTP_" + key
        environ[key] = environ[key] + "," + value if key in environ else value
    if body is not _EMPTY_INPUT or "CONTENT_LENGTH" in environ:
        environ["CONTENT_LENGTH"] = str(length)
    return environ


class _EmptyInput:
    def read(self, size=-1):
        return b""

    def readline(self, size=-1):
        return b""

    def readlines(self, hint=-1):
        return []

    def __iter__(self):
        return iter(())


_EMPTY_INPUT = _EmptyInput()


class Response:
    """start_response, the write callable and the framing of one response."""

    def __init__(self, conn, request, server):
        self.conn = conn
        self.request = request
        self.server = server
        self.status = None
        self.status_code = 0  # an int, once the head is made (0: none was)
        self.headers = None
        self.headers_sent = False
        self.chunked = False
        self.sent = 0
        # Draining keeps the connection only when it can be handed back afterwards.
        self.keep_alive = request.keep_alive and not (conn.close_after or (server.stopping and conn.tls))
        self.no_body = request.head.method == "HEAD"
        self.counts_answers = server.limit_concurrency is not None
        self.declared_length = None  # the app's Content-Length, when counts_answers

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, body_length):
        """The status line and headers; body_length None = not known in advance."""
        if self.status is None:
            raise AssertionError("the WSGI app returned without calling start_response()")
        self.status_code = status_code = int(self.status[:3])
        lines = [b"HTTP/1.1 ", self.status.encode("latin-1"), b"\r\n"]
        has_length = has_date = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                has_length = True
                if self.counts_answers and value.strip().isdigit():
                    self.declared_length = int(value)
            elif lower == "date":
                has_date = True
            elif lower == "connection":
                if "close" in value.lower():
                    self.keep_alive = False
                continue
            elif lower == "transfer-encoding":
                continue  # we frame the body ourselves
            lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        bodiless = status_code < 200 or status_code in _NO_BODY_STATUSES
        if not has_length and not bodiless:
            if self.no_body:
                pass  # HEAD: no made-up length; the GET's is not known here
            elif body_length is not None:
                lines.append(b"content-length: %d\r\n" % body_length)
            elif self.request.head.version == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 without a length: the close ends it
        if not has_date:
            lines.append(self.server.date.header())
        lines.append(self.server.extra_headers)
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        elif self.request.head.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.headers_sent = True
        return b"".join(lines)

    def whole(self, body):
        """A response whose whole body is known: one send, with a Content-Length."""
        head = self._head(len(body))
        if self.counts_answers:
            self.server.answered(self.conn)
        if self.no_body:
            self.conn.sock.sendall(head)
        else:
            self.conn.sock.sendall(head + body)
            self.sent = len(body)

    def write(self, data):
        out = b"" if self.headers_sent else self._head(None)
        if data and not self.no_body:
            self.sent += len(data)
            out += (b"%x\r\n%s\r\n" % (len(data), data)) if self.chunked else data
            if self.declared_length is not None and self.sent >= self.declared_length:
                self.server.answered(self.conn)  # the last of a body of known length
        if out:
            self.conn.sock.sendall(out)

    def finish(self):
        if self.counts_answers:
            self.server.answered(self.conn)
        if not self.headers_sent:
            self.conn.sock.sendall(self._head(None if self.no_body else 0))
        elif self.chunked:
            self.conn.sock.sendall(b"0\r\n\r\n")
