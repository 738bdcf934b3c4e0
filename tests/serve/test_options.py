"""Serving options and response headers, both servers: TLS end to end (a CA and a
certificate made by trustme), --root-path, the server header and --header, one Date,
HEAD, the app factory helpers, and one-line errors for bad values."""
import http.client
import json
import os
import ssl
import sys
import types

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import DirectServer, Responses, connect, get  # noqa: E402

from pyclusterc._lowlevel.options import OptionError  # noqa: E402
from pyclusterc.serve import options  # noqa: E402

pytestmark = pytest.mark.timeout(60)

INTERFACES = ["wsgi", "asgi"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return str(certfile), str(keyfile), str(cafile)


@pytest.mark.parametrize("interface", INTERFACES)
def test_tls_keep_alive_and_new_connections(interface, tls_files):
    certfile, keyfile, cafile = tls_files
    client_context = ssl.create_default_context(cafile=cafile)
    with DirectServer(interface, settings={"ssl_certfile": certfile, "ssl_keyfile": keyfile}) as server:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context, timeout=10)
        try:
            conn.request("GET", "/first")
            info = json.loads(conn.getresponse().read())
            assert info["scheme"] == "https" and info["path"] == "/first"
            sock = conn.sock
            for i in range(5):
                conn.request("POST", "/echo", body=b"x" * (i * 5000))
                response = conn.getresponse()
                assert json.loads(response.read())["body"] == "x" * (i * 5000)
                assert conn.sock is sock  # kept alive over TLS
        finally:
            conn.close()
        for _ in range(5):  # new connections, each with its handshake
            conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context, timeout=10)
            conn.request("GET", "/", headers={"Connection": "close"})
            assert conn.getresponse().status == 200
            conn.close()
        with connect(server.port) as plain:  # plain HTTP to the TLS port: closed, the server lives
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Responses(plain).closed(timeout=5)
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()


@pytest.mark.parametrize("interface", INTERFACES)
def test_root_path(interface):
    with DirectServer(interface, settings={"root_path": "/api"}) as server:
        for path in ("/items", "/api/items"):  # a proxy that strips the prefix, and one that does not
            info = json.loads(get(server.port, path)[2])
            if interface == "wsgi":
                assert (info["script_name"], info["path"]) == ("/api", "/items")
            else:
                assert (info["root_path"], info["path"]) == ("/api", "/api/items")


def _names(headers):
    return [name.lower() for name, _ in headers]


@pytest.mark.parametrize("interface", INTERFACES)
def test_server_header_and_extra_headers(interface):
    with DirectServer(interface) as server:
        _, headers, _ = get(server.port)
        assert ("server", "pyclusterc") in [(n.lower(), v) for n, v in headers]
        assert _names(headers).count("server") == 1
    with DirectServer(interface, settings={"server_header": False,
                                           "header": [["X-Frame-Options", "DENY"], ["X-Team", "web"]]}) as server:
        status, headers, _ = get(server.port)
        pairs = [(n.lower(), v) for n, v in headers]
        assert "server" not in _names(headers)
        assert ("x-frame-options", "DENY") in pairs and ("x-team", "web") in pairs
        with connect(server.port) as sock:  # errors carry them too
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            status, headers, _ = Responses(sock).next()
            assert status == 400 and ("x-team", "web") in [(n.lower(), v) for n, v in headers]


@pytest.mark.parametrize("interface", INTERFACES)
def test_one_date_and_head_sends_what_get_would(interface):
    with DirectServer(interface) as server:
        _, headers, _ = get(server.port, "/date")
        dates = [v for n, v in headers if n.lower() == "date"]
        assert dates == ["Tue, 01 Dec 2020 00:00:00 GMT"]  # the app's, once
        _, headers, _ = get(server.port)
        assert _names(headers).count("date") == 1  # ours when the app sets none
        with connect(server.port) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            status, get_headers, body = Responses(sock).next()
            assert body == b"abc" and "transfer-encoding" in _names(get_headers)
            sock.sendall(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            status, head_headers, _ = Responses(sock, head_request=True).next()
            assert status == 200
            assert "content-length" not in _names(head_headers)  # no made-up length
            sock.sendall(b"HEAD /date HTTP/1.1\r\nHost: x\r\n\r\n")
            status, head_headers, _ = Responses(sock, head_request=True).next()
            assert ("content-length", "2") in [(n.lower(), v) for n, v in head_headers]
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection still frames right
            assert Responses(sock).next()[0] == 200


@pytest.mark.parametrize("interface", INTERFACES)
def test_http10_keep_alive(interface):
    with DirectServer(interface) as server:
        with connect(server.port) as sock:
            responses = Responses(sock)
            for _ in range(3):
                sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                status, headers, _ = responses.next()
                assert status == 200
                assert ("connection", "keep-alive") in [(n.lower(), v.lower()) for n, v in headers]
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert responses.next()[0] == 200
            assert responses.closed()


@pytest.mark.parametrize("interface", INTERFACES)
def test_underscore_headers(interface):
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX_Auth_User: spoof\r\nX-Auth-User: real\r\n\r\n"
    with DirectServer(interface) as server:
        with connect(server.port) as sock:
            sock.sendall(request)
            info = json.loads(Responses(sock).next()[2])
        headers = info["headers"]
        if interface == "wsgi":
            assert headers["HTTP_X_AUTH_USER"] == "real"
        else:
            assert [v for n, v in headers if n.replace("_", "-") == "x-auth-user"] == ["real"]
    with DirectServer(interface, settings={"header_map": "refuse"}) as server:
        with connect(server.port) as sock:
            sock.sendall(request)
            assert Responses(sock).next()[0] == 400


def test_factory_call_and_resolve():
    assert options.factory_call("app:create_app()") == ("app:create_app", ((), {}))
    assert options.factory_call("pkg.app:make('prod', debug=True)") == \
        ("pkg.app:make", (("prod",), {"debug": True}))
    assert options.factory_call("app:application") == ("app:application", None)
    with pytest.raises(OptionError):
        options.factory_call("app:create_app(os.environ)")
    settings = types.SimpleNamespace(factory=True)

    def create_app(name="default"):
        return ("app", name)
    assert options.resolve_factory(create_app, settings) == ("app", "default")
    assert options.resolve_factory(create_app, types.SimpleNamespace(factory=False)) is create_app
    assert options.resolve_factory(create_app, types.SimpleNamespace(factory=False),
                                   ((), {"name": "x"})) == ("app", "x")
    with pytest.raises(OptionError):
        options.resolve_factory(object(), settings)


@pytest.mark.parametrize("name,value", [
    ("limit_request_line", "abc"), ("limit_request_line", "0"), ("limit_request_fields", "-1"),
    ("limit_request_field_size", "1e9"), ("limit_request_body", "lots"), ("header_timeout", "soon"),
    ("limit_concurrency", "0"), ("backlog", "100000"), ("header_map", "keep"),
    ("header", "no-colon"), ("header", "Bad Name:v"), ("ssl_certfile", "/no/such/file.pem"),
    ("ssl_cert_reqs", "maybe"),
])
def test_bad_values_are_one_line_errors(name, value):
    option = next(o for o in options.OPTIONS if o.name == name)
    with pytest.raises(OptionError) as info:
        option.convert(value)
    message = str(info.value)
    assert "\n" not in message and name.replace("_", "-") in message


def test_settings_that_need_each_other(tmp_path):
    base = {o.name: o.default for o in options.OPTIONS}
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    for bad in ({"ssl_keyfile": str(key)}, {"ssl_certfile": str(key)}, {"root_path": "api/"}):
        with pytest.raises(OptionError) as info:
            options.check(types.SimpleNamespace(**{**base, **bad}))
        assert "\n" not in str(info.value)
    options.check(types.SimpleNamespace(**base))


@pytest.mark.parametrize("interface", INTERFACES)
def test_factory_apps_serve(interface):
    """The factory helpers as the app loader uses them (tests/serve/direct.py):
    --factory, and a call spelled in the target."""
    with DirectServer(interface, app=f"factory_app:create_{interface}", settings={"factory": True}) as server:
        assert get(server.port)[2] == b"hello"
    with DirectServer(interface, app=f"factory_app:create_{interface}('hi there')") as server:
        assert get(server.port)[2] == b"hi there"
