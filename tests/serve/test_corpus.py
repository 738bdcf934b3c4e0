"""gunicorn's HTTP request corpus (tests/serve/gunicorn_requests, MIT, see its LICENSE)
through both servers: every valid request gives the environ / scope gunicorn expects
(method, path, query, headers, body), every invalid one a 4xx or a close, never a 2xx,
and the server keeps serving. Each valid file is sent whole and a byte at a time."""
import glob
import json
import os
import sys
import time
import types
from urllib.parse import unquote_to_bytes

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect, get  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn_requests")

# gunicorn settings some files set, and ours that match them.
_OURS = {"limit_request_line": "limit_request_line", "limit_request_fields": "limit_request_fields",
         "limit_request_field_size": "limit_request_field_size", "header_map": "header_map"}
# Settings we do not have: each file that needs one is skipped, with the reason.
_NOT_OURS = {
    "proxy_protocol": "the PROXY protocol is not supported",
    "permit_obsolete_folding": "obs-fold is always refused (RFC 9112 §5.2 allows a 400)",
    "strip_header_spaces": "whitespace before ':' is always refused (RFC 9112 §5.1 requires a 400)",
    "permit_unconventional_http_method": "methods outside gunicorn's default rule are always refused",
    "casefold_http_method": "methods are case-sensitive (RFC 9110 §9.1)",
    "forwarded_allow_ips": "X-Forwarded-Proto/-Ssl are not interpreted",
}
# Files whose text cannot be replayed over a socket as gunicorn's parser test reads it.
_NOT_REPLAYABLE = {
    "099.http": "its Content-Length (17914) is longer than the body the file holds once "
                "treq's newline stripping is applied (8599 bytes); gunicorn's parser test ends "
                "the body at the end of its input, a socket leaves the request incomplete",
}


class _Config:
    def __init__(self):
        self.settings = {}

    def set(self, name, value):
        self.settings[name] = value


def _uri(raw):
    from urllib.parse import urlsplit
    path, query = raw, ""
    if raw.startswith("//") or "://" not in raw:
        path = raw.split("#", 1)[0]
        path, _, query = path.partition("?")
    else:
        parts = urlsplit(raw)
        path, query = parts.path, parts.query
    return {"raw": raw, "path": path, "query": query}


class _Errors(types.ModuleType):
    def __getattr__(self, name):
        return type(name, (Exception,), {})


def load_case(http_file):
    """(data to send, expected requests or None for invalid, our settings, skip reason)."""
    fake = {"gunicorn": types.ModuleType("gunicorn"), "gunicorn.config": types.ModuleType("gunicorn.config"),
            "gunicorn.http": types.ModuleType("gunicorn.http"), "gunicorn.http.errors": _Errors("gunicorn.http.errors")}
    fake["gunicorn.config"].Config = _Config
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        env = {"uri": _uri, "cfg": _Config(), "__name__": "__config__"}
        with open(http_file[:-5] + ".py") as f:
            exec(compile(f.read(), http_file[:-5] + ".py", "exec"), env)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    with open(http_file, "rb") as f:
        data = f.read()
    # gunicorn's treq.py: newlines are layout, escapes are bytes.
    data = data.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\000").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    out, i = bytearray(), 0
    while i < len(data):
        if data[i:i + 2] == b"\\x" and i + 3 < len(data):
            out.append(int(data[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(data[i])
            i += 1
    settings, skip = {}, None
    for name, value in env["cfg"].settings.items():
        if name in _NOT_OURS:
            skip = f"needs gunicorn's {name}: {_NOT_OURS[name]}"
        elif name == "limit_request_field_size" and value == 0:
            pass  # gunicorn's 0 means its default, which is ours
        else:
            settings[_OURS[name]] = value
    expected = env["request"]
    if isinstance(expected, type):
        expected = None
    elif not isinstance(expected, list):
        expected = [expected]
    return bytes(out), expected, settings, skip


def _files(kind):
    return sorted(glob.glob(os.path.join(CORPUS, kind, "*.http")))


_servers = {}


@pytest.fixture(scope="module")
def servers():
    """One server per (interface, settings), started when a case first needs it."""
    def server(interface, settings):
        key = (interface, json.dumps(settings, sort_keys=True))
        if key not in _servers:
            _servers[key] = DirectServer(interface, settings=settings).__enter__()
        return _servers[key]
    yield server
    for server in _servers.values():
        server.__exit__(None, None, None)
    _servers.clear()


def _send(sock, data, mode):
    if mode == "whole":
        sock.sendall(data)
    else:
        try:
            for i in range(len(data)):
                sock.send(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed after a request that ends the connection: the rest is not read


def _expected_environ(request):
    headers = {}
    for name, value in request["headers"]:
        key = name.upper().replace("-", "_")
        if key in ("TRANSFER_ENCODING", "EXPECT"):
            continue  # acted on by the server, not passed on
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        headers[key] = headers[key] + "," + value if key in headers else value
    body = request["body"]
    body = body.encode("latin-1") if isinstance(body, str) else body
    if body or "CONTENT_LENGTH" in headers:
        headers["CONTENT_LENGTH"] = str(len(body))
    return headers, body


def _check(interface, got, request):
    status, _, body = got
    assert status == 200, body
    info = json.loads(body)
    uri = request["uri"]
    assert info["method"] == request["method"]
    raw_path = uri["path"].encode("latin-1")
    if not raw_path.startswith(b"/"):  # OPTIONS *, CONNECT host:port: no path
        assert info["path"] == ("" if interface == "wsgi" or request["method"] == "CONNECT" else "*")
    elif interface == "wsgi":
        assert info["path"] == unquote_to_bytes(raw_path).decode("latin-1")
    else:
        assert info["path"] == unquote_to_bytes(raw_path).decode("utf-8", "replace")
    assert info["query"] == uri["query"]
    assert info["protocol"] == "HTTP/%d.%d" % request["version"]
    headers, expected_body = _expected_environ(request)
    if interface == "wsgi":
        assert info["headers"] == headers
    else:
        assert info["headers"] == [[name.lower(), value] for name, value in request["headers"]]
    assert info["body"].encode("latin-1") == expected_body


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize("http_file", _files("valid"), ids=os.path.basename)
def test_valid(servers, interface, http_file):
    data, expected, settings, skip = load_case(http_file)
    skip = skip or _NOT_REPLAYABLE.get(os.path.basename(http_file))
    if skip:
        pytest.skip(skip)
    server = servers(interface, settings)
    for mode in ("whole", "bytes"):
        with connect(server.port) as sock:
            _send(sock, data, mode)
            responses = Responses(sock)
            for request in expected:
                got = responses.next()
                assert got is not None, f"{mode}: closed before the response to {request['uri']['raw']}"
                _check(interface, got, request)


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize("http_file", _files("invalid"), ids=os.path.basename)
def test_invalid(servers, interface, http_file):
    data, _, settings, skip = load_case(http_file)
    if skip:
        pytest.skip(skip)
    server = servers(interface, settings)
    with connect(server.port) as sock:
        sock.sendall(data)
        sock.shutdown(1)  # EOF after the data: an incomplete request must not hang
        responses = Responses(sock)
        started = time.monotonic()
        got = responses.next()
        if got is not None:
            assert 400 <= got[0] < 500, got
            assert responses.next() is None  # and then a close
        assert time.monotonic() - started < 5
    assert get(server.port)[0] == 200  # the server serves on
