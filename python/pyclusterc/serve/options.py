"""The settings HTTP serving reads (one definition each; ``manager.settings`` gathers them
with the process-management ones into ``RunSettings``, and the CLI builds its flags from
them). A serving function gets the whole ``RunSettings`` and reads these attributes.

Also here, for the layer that loads the app and checks settings: ``check(settings)``
(cross-setting errors, one line each), ``factory_call(target)`` and
``resolve_factory(obj, settings, call)`` (``--factory`` and ``module:create_app()``)."""
import ast
import ipaddress
import os
import types

from .._lowlevel.options import Option, OptionError, choice, integer_range, positive_int, seconds, size, text

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def forwarded_ips(value):
    """Comma-separated IPs or networks (10.0.0.0/8), or '*'."""
    for item in value.split(","):
        item = item.strip()
        try:
            if item != "*":
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"invalid forwarded-allow-ips entry {item!r}; use IPs or networks "
                             "(10.0.0.0/8), comma-separated, or '*'") from None
    return value


def header_line(value):
    """NAME:VALUE -> (name, value), a header added to every response."""
    name, colon, rest = value.partition(":")
    name = name.strip()
    if not colon or not name or any(c in name for c in ' \t()<>@,;\\"/[]?={}\0\r\n') \
            or any(c in rest for c in "\0\r\n"):
        raise ValueError("expected NAME:VALUE, e.g. X-Frame-Options:DENY")
    return (name, rest.strip())


def existing_file(value):
    value = text(value)
    if not os.path.isfile(value):
        raise ValueError("no such file")
    return value


_SERVING = "HTTP serving"
_LIMITS = "HTTP limits (both servers; a request over one gets a 4xx and a close)"
_TLS = "TLS (the worker does the handshake; the primary passes raw TCP)"

OPTIONS = (
    Option("threads", None, "threads per worker: WSGI request threads (default 8); ASGI event "
           "loops, each with its own lifespan (default 1)", parse=positive_int, metavar="N",
           file_types=(int,)),
    Option("log_level", "info", "default info", parse=choice(*LOG_LEVELS), metavar="LEVEL"),
    Option("access_log", True, "log every request (default on; --no-access-log turns it off; "
           "off too with --log-level warning or above, unless --access-log-format is given)",
           negatable=True),
    Option("access_log_format", None,
           "access log line with gunicorn's atoms, e.g. '%%(h)s \"%%(r)s\" %%(s)s %%(b)s %%(L)s' "
           "(implies --access-log)", parse=text, metavar="FORMAT", group=_SERVING),
    Option("forwarded_allow_ips", None,
           "ASGI: trust X-Forwarded-For/-Proto from these comma-separated IPs or networks, '*' "
           "for any (default $FORWARDED_ALLOW_IPS or 127.0.0.1, as uvicorn)",
           parse=forwarded_ips, metavar="IPS"),
    Option("keep_alive", 5.0, "close a keep-alive connection idle this long (default 5, uvicorn's)",
           parse=seconds, metavar="SECONDS", file_types=(int, float)),
    Option("header_timeout", 10.0, "a request head (request line and headers) must arrive "
           "whole within this, from its first byte or the connection's start (default 10; "
           "408, or a close when nothing came)", parse=seconds, metavar="SECONDS",
           file_types=(int, float), group=_LIMITS),
    Option("limit_request_line", 4094, "bytes of request target (default 4094, gunicorn's; 414)",
           parse=integer_range(16, 1 << 20), metavar="BYTES", file_types=(int,), group=_LIMITS),
    Option("limit_request_fields", 100, "header fields per request (default 100; 431)",
           parse=integer_range(1, 32768), metavar="N", file_types=(int,), group=_LIMITS),
    Option("limit_request_field_size", 8190, "bytes of one header field, name and value "
           "(default 8190; 431)", parse=integer_range(16, 1 << 20), metavar="BYTES",
           file_types=(int,), group=_LIMITS),
    Option("limit_request_body", 100 << 20, "bytes of request body, e.g. 10M (default 100M; "
           "413 before the body is read)", parse=size, metavar="SIZE", file_types=(int, str),
           group=_LIMITS),
    Option("limit_concurrency", None, "requests in progress per worker beyond which new "
           "ones get 503 (default: no limit)", parse=positive_int, metavar="N", file_types=(int,),
           group=_LIMITS),
    Option("header_map", "drop", "header names with '_': drop (default, as gunicorn: "
           "X_Auth_User cannot pose as X-Auth-User), refuse (400) or dangerous (keep)",
           parse=choice("drop", "refuse", "dangerous"), metavar="MODE", group=_LIMITS),
    Option("backlog", 2048, "listen backlog of the sockets the primary binds (default 2048)",
           parse=integer_range(1, 65535), metavar="N", file_types=(int,), group=_SERVING),
    Option("root_path", "", "the path prefix a proxy mounts the app under (ASGI root_path, "
           "WSGI SCRIPT_NAME)", parse=text, metavar="PATH", group=_SERVING),
    Option("server_header", True, "send 'server: pyclusterc' (--no-server-header: none)",
           negatable=True, group=_SERVING),
    Option("header", (), "add NAME:VALUE to every response (repeatable)", parse=header_line,
           metavar="NAME:VALUE", repeat=True, file_types=(str, list), group=_SERVING),
    Option("factory", False, "TARGET names a function that returns the app (also "
           "module:create_app() in TARGET)", group=_SERVING),
    Option("ssl_certfile", None, "PEM certificate (chain): serve HTTPS", parse=existing_file,
           metavar="FILE", group=_TLS),
    Option("ssl_keyfile", None, "PEM private key (default: in --ssl-certfile)",
           parse=existing_file, metavar="FILE", group=_TLS),
    Option("ssl_ca_certs", None, "PEM CA certificates to verify client certificates with",
           parse=existing_file, metavar="FILE", group=_TLS),
    Option("ssl_cert_reqs", "none", "client certificates: none (default), optional, required",
           parse=choice("none", "optional", "required"), metavar="MODE", group=_TLS),
)


def with_defaults(settings):
    """``settings`` with every serving option present: a caller that predates an option
    (or a test's namespace) gets its default. Other attributes pass through."""
    missing = {option.name: option.default for option in OPTIONS if not hasattr(settings, option.name)}
    if not missing:
        return settings
    return types.SimpleNamespace(**{**vars(settings), **missing})


def check(settings):
    """Errors that involve more than one setting (one line each): OptionError."""
    if getattr(settings, "ssl_keyfile", None) and not getattr(settings, "ssl_certfile", None):
        raise OptionError("--ssl-keyfile needs --ssl-certfile")
    if getattr(settings, "ssl_ca_certs", None) and not getattr(settings, "ssl_certfile", None):
        raise OptionError("--ssl-ca-certs needs --ssl-certfile")
    if getattr(settings, "ssl_certfile", None):
        ssl_context(settings)
    root = getattr(settings, "root_path", "")
    if root and (not root.startswith("/") or root.endswith("/")):
        raise OptionError(f"invalid root-path {root!r}: expected /prefix (a leading '/', no trailing '/')")


def ssl_context(settings):
    """The server-side SSLContext for the settings, or None without --ssl-certfile."""
    if not settings.ssl_certfile:
        return None
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        if settings.ssl_ca_certs:
            context.load_verify_locations(settings.ssl_ca_certs)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise OptionError(f"invalid TLS certificate/key ({settings.ssl_certfile}): {e}") from None
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[settings.ssl_cert_reqs]
    context.set_alpn_protocols(["http/1.1"])
    return context


def factory_call(target):
    """'mod:create_app()' or 'mod:create_app(1, debug=True)' (gunicorn's spelling: literal
    arguments only) -> ('mod:create_app', (args, kwargs)); any other target -> (target, None)."""
    module, colon, attr = target.rpartition(":")
    if not colon or not attr.endswith(")") or "(" not in attr:
        return target, None
    name, _, arguments = attr.partition("(")
    try:
        call = ast.parse(f"f({arguments}", mode="eval").body
        args = tuple(ast.literal_eval(arg) for arg in call.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        if any(key is None for key in kwargs):
            raise ValueError
    except (SyntaxError, ValueError):
        raise OptionError(f"invalid app target {target!r}: call arguments must be literals, "
                          "e.g. module:create_app() or module:create_app('prod')") from None
    return f"{module}:{name.strip()}", (args, kwargs)


def resolve_factory(obj, settings, call=None):
    """The app: ``obj`` itself, or what calling it returns when ``--factory`` is set or the
    target spelled a call (``call`` from ``factory_call``). Errors from the factory
    propagate (they are the app's: show them as import errors)."""
    if call is None and not getattr(settings, "factory", False):
        return obj
    if not callable(obj):
        raise OptionError(f"the app factory {obj!r} is not callable")
    args, kwargs = call or ((), {})
    return obj(*args, **kwargs)
