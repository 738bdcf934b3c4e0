"""HTTP/1.1 request framing shared by both servers: sans-IO, bytes in, callbacks out.

    socket bytes ─► RequestReader.feed ─► buffer ─┬─ head incomplete: limits checked on
                                                  │  the buffer as it grows (431/414)
                                                  ├─ head complete: parse_head (httptools,
                                                  │  then the RFC 9112 checks it leaves out)
                                                  │  ─► handler.on_head(head)
                                                  ├─ body: Content-Length slices or chunked
                                                  │  decoding ─► handler.on_body(bytes)
                                                  └─ end (trailers parsed, never merged)
                                                     ─► handler.on_end()

The reader finds message boundaries itself (the head ends at the first blank line, the
body by its framing), so a head is parsed only once it is whole and its size is bounded
by the limits while it arrives: a 16 MiB header line costs the limit, not 16 MiB.
httptools' own parser builds a long line by repeated concatenation and accepts several
things RFC 9112 rejects (two Host fields, HTTP/2.0, a relative target, chunked under
HTTP/1.0); llhttp also rejects well-formed method tokens it does not know. Errors raise
``HTTPError(status)``: the caller answers with that status and closes.
"""
import re

import httptools

__all__ = ["HTTPError", "Limits", "Head", "HeadParser", "RequestReader", "parse_head", "has_obs_text"]


class HTTPError(Exception):
    """A request answered with ``status`` (4xx) and then a close."""

    def __init__(self, status, reason=""):
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


class Limits:
    """What a request may be; read from the serving settings."""
    __slots__ = ("line", "fields", "field_size", "body", "header_map", "head", "short_head")

    def __init__(self, line=4094, fields=100, field_size=8190, body=100 << 20, header_map="drop"):
        self.line, self.fields, self.field_size, self.body = line, fields, field_size, body
        self.header_map = header_map
        # The whole head: every field at its limit (+CRLF and the blank line).
        self.head = line + 2 + fields * (field_size + 2) + 2
        self.short_head = min(line, field_size - 2)  # no head this long breaks a line limit

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.limit_request_line, settings.limit_request_fields,
                   settings.limit_request_field_size, settings.limit_request_body,
                   settings.header_map)


class Head:
    """A parsed request head: method, target, version ("1.1"), keep_alive; headers:
    (name lowercased, value trimmed) without the dropped underscore names; path/query:
    the target split, fragment dropped, absolute-form reduced to its path; raw: the head
    as sent, raw[:line_end] its request line."""
    # Defaults as class attributes: no __init__ on the per-request path.
    upgrade = None
    expect_continue = False
    content_length = None
    chunked = False
    forwarded = False  # has X-Forwarded-For or -Proto (a proxy may have set them)
    client_closes = False
    # A coded body (gzip) the app must decode: the next request's framing would rest
    # on it being right (gunicorn closes after it too).
    keep_alive_forced_off = False


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHOD = re.compile(rb"[!$%&'*+\-.^_`|~0-9A-Z]+\Z")
# Fields that frame or route a message (RFC 9110 §6.5.1): a sender may not put them in
# trailers, and a proxy that merged them would act on them.
_FORBIDDEN_TRAILERS = frozenset((b"content-length", b"transfer-encoding", b"host", b"trailer", b"te"))


class HeadParser:
    """httptools for whole heads. It is fed one complete head at a time and parses it
    at once, so one instance serves every connection of a thread (an event loop, the
    WSGI acceptor); its llhttp parser is reused while each head ended its message (no
    body follows) and made anew after one with a body.

    Each field is checked as llhttp hands it over (one pass, no second list): names
    lowercased, values trimmed, underscore names dropped, the framing fields read. An
    error found there is kept and raised once llhttp returns (an exception raised in a
    callback would reach us wrapped in httptools' own)."""
    __slots__ = ("parser", "parser_now", "url", "headers", "keep_alive", "header_map",
                 "error", "length", "te", "expect_continue", "seen", "forwarded", "underscores",
                 "host_seen", "dropped")

    def __init__(self):
        self.parser = None

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if value and value[-1] in _OWS:  # llhttp skipped the leading OWS, not the trailing
            value = value.rstrip(b" \t")
        name = name.lower()
        if name == b"host":  # in every request: checked here, not in special()
            if self.host_seen:
                self.fail(HTTPError(400, "repeated host"))
            self.host_seen = True
        # (bytes.find, not `in`: in CPython 3.11 `bytes in bytes` raises and clears a
        # TypeError inside before it searches; only a head with a "_" looks per field.)
        elif self.underscores and name.find(b"_") >= 0:
            if self.header_map == "drop":
                # X_Auth_User would become HTTP_X_AUTH_USER, the same key as X-Auth-User:
                # a header a proxy in front did not strip could spoof it (gunicorn drops too).
                self.dropped += 1
                return
            if self.header_map == "refuse":
                self.fail(HTTPError(400, "underscore in a header name"))
        elif name in _SPECIAL:
            kind = _SPECIAL[name]
            if kind == _FORWARDED:
                self.forwarded = True
            else:
                self.special(kind, name, value)
        self.headers.append((name, value))

    def special(self, kind, name, value):
        if kind == _CONTENT_LENGTH:
            if self.length is not None or not value.isdigit():
                self.fail(HTTPError(400, "invalid or repeated content-length"))
            else:
                self.length = int(value)
        elif kind == _TRANSFER_ENCODING:
            self.te = (self.te or []) + [token.strip().lower() for token in value.split(b",")]
        elif kind == _EXPECT:
            self.expect_continue = value.lower() == b"100-continue"
        elif name in self.seen:
            # Not list-valued (RFC 9110 §5.3): a second one is read differently by
            # different parsers (Host: routing, Content-Type: the body's meaning).
            self.fail(HTTPError(400, "repeated " + name.decode()))
        else:
            self.seen += (name,)

    def fail(self, error):
        if self.error is None:
            self.error = error

    def on_headers_complete(self):
        # Read here: llhttp clears its flags once a message without a body completes.
        self.keep_alive = self.parser_now.should_keep_alive()

    def parse(self, raw, limits):
        parser = self.parser
        if parser is None:
            parser = httptools.HttpRequestParser(self)
            # Transfer-Encoding beside Content-Length is refused by _check, once the TE
            # tokens are read as RFC 9112 says (llhttp refuses even "identity" with a length).
            parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self.url = b""
        self.headers = []
        self.keep_alive = False
        self.header_map = limits.header_map
        self.dropped = 0
        self.host_seen = False
        self.error = self.length = self.te = None
        self.expect_continue = self.forwarded = False
        self.underscores = raw.find(b"_") >= 0
        self.seen = ()
        self.parser_now = parser
        self.parser = None  # until the head parsed cleanly and ended its message
        upgrade = False
        try:
            parser.feed_data(raw)
        except httptools.HttpParserUpgrade:
            upgrade = True
        except httptools.HttpParserInvalidMethodError:
            return _parse_unknown_method(raw, limits)
        except httptools.HttpParserInvalidURLError:
            return _parse_obs_text_target(raw, limits)
        except httptools.HttpParserError:
            raise HTTPError(400, "malformed request head") from None
        head = Head()
        method = parser.get_method()
        head.method = _METHODS.get(method) or method.decode("ascii")
        # The version from the request line llhttp accepted ("... HTTP/1.1\r\n"): a
        # lookup where get_http_version() formats a new string. Only a line of exactly
        # method SP target SP version is read so: llhttp also takes "GET /x\n" as an
        # HTTP/0.9 line, and the version at the end of the first CRLF line is then a
        # header's (refused below, as 0.9).
        line_end = raw.find(b"\r\n")
        version = _VERSION_OF.get(raw[line_end - 9:line_end])
        if version is None or line_end != len(method) + len(self.url) + 10:
            version = parser.get_http_version()
        head.version = version
        head.raw, head.line_end = raw, line_end  # the request line, for the access log
        head.target = self.url
        if version not in _VERSIONS:
            raise HTTPError(400, "unsupported HTTP version")
        if len(self.headers) + self.dropped > limits.fields:
            raise HTTPError(431, "too many header fields")
        if self.error is not None:
            raise self.error
        _check(head, self, upgrade)
        if self.keep_alive and not (upgrade or head.chunked or head.content_length):
            # llhttp ended the message with the head (no body) and awaits the next one
            # (after a closing message it refuses more input).
            self.parser = parser
        return head


def parse_head(raw, limits):
    """Head for ``raw`` (request line to blank line included). Raises HTTPError."""
    return HeadParser().parse(raw, limits)


def _parse_unknown_method(raw, limits):
    # llhttp knows a fixed list of methods; RFC 9110 allows any token. The method does
    # not change how the rest of a head parses (CONNECT, which does, is in llhttp's
    # list), so llhttp parses the head with a known method in its place. Like gunicorn
    # by default: an uppercase token of 3 to 20 characters (a lowercase one is refused:
    # methods are case-sensitive, and "get" is a smuggling favourite).
    method, space, rest = raw.partition(b" ")
    if not space or not (3 <= len(method) <= 20) or not _METHOD.match(method):
        raise HTTPError(400, "invalid method")
    head = parse_head(b"GET " + rest, limits)
    head.method = method.decode("ascii")
    head.raw, head.line_end = raw, raw.find(b"\r\n")
    return head


_OBS_TEXT = re.compile(rb"[\x80-\xff]")


def _parse_obs_text_target(raw, limits):
    # Raw UTF-8 in a path (/caf\xc3\xa9) is sent by real clients and accepted by
    # gunicorn; llhttp refuses any byte above 0x7f in a URL. Parse with those bytes
    # percent-encoded, keep the target as sent (PATH_INFO carries the bytes either way).
    end = raw.find(b"\r\n")
    method, _, rest = raw[:end].partition(b" ")
    target, space, version = rest.rpartition(b" ")
    if not space or not _OBS_TEXT.search(target):
        raise HTTPError(400, "invalid request target")
    quoted = _OBS_TEXT.sub(lambda m: b"%%%02X" % m.group()[0], target)
    head = parse_head(b"%s %s %s%s" % (method, quoted, version, raw[end:]), limits)
    head.target = target
    head.raw, head.line_end = raw, end
    _split_target(head)
    return head


def has_obs_text(data):
    return _OBS_TEXT.search(data) is not None


def _check_lines(raw, limits):
    """gunicorn's line limits, on the head as sent: the request line, and each field
    line with its CRLF. Only a head longer than a limit can break one."""
    lines = raw.split(b"\r\n")
    if len(lines[0]) > limits.line:
        raise HTTPError(414, "request line too long")
    if any(len(line) + 2 > limits.field_size for line in lines[1:]):
        raise HTTPError(431, "header field too large")


_VERSIONS = ("1.1", "1.0")
# Fields read here (all others pass through).
_VERSION_OF = {b" HTTP/1.1": "1.1", b" HTTP/1.0": "1.0"}
_CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT, _SINGLE, _FORWARDED = 1, 2, 3, 4, 5
_SPECIAL = {b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING,
            b"expect": _EXPECT, b"content-type": _SINGLE,
            b"x-forwarded-for": _FORWARDED, b"x-forwarded-proto": _FORWARDED}


def _check(head, fields, upgrade):
    """RFC 9112 checks llhttp leaves out, on what HeadParser read from the fields.
    fields.keep_alive: llhttp's reading of the version and Connection tokens."""
    head.headers = fields.headers
    head.expect_continue = fields.expect_continue
    if fields.forwarded:
        head.forwarded = True
    if fields.te is not None:
        _check_transfer_coding(head, fields.te, fields.length)
    head.content_length = fields.length
    head.keep_alive = fields.keep_alive and not head.keep_alive_forced_off
    head.client_closes = not fields.keep_alive  # Connection: close, or HTTP/1.0 without keep-alive
    if upgrade and head.method != "CONNECT":
        head.upgrade = True
    target = head.target
    if target == b"/" or _PLAIN_PATH(target):
        head.path, head.query = target, b""  # the common origin-form
    else:
        _split_target(head)


_OWS = b" \t"
_PLAIN_PATH = re.compile(rb"/[^?#]*\Z").match


def _check_transfer_coding(head, te, length):
    if head.version == "1.0":
        raise HTTPError(400, "transfer-encoding in HTTP/1.0")
    chunked = False
    for coding in te:
        if chunked:  # RFC 9112 §6.3: chunked must be final, and once (stacked chunking)
            raise HTTPError(400, "chunked must be the final transfer coding, once")
        if coding == b"chunked":
            chunked = True
        elif coding in (b"gzip", b"deflate", b"compress", b"x-gzip"):
            head.keep_alive_forced_off = True
        elif coding != b"identity":
            raise HTTPError(501, "unknown transfer coding")
    if not chunked and te != [b"identity"] * len(te):
        raise HTTPError(400, "a transfer coding without chunked last")
    if chunked and length is not None:
        raise HTTPError(400, "both content-length and transfer-encoding")
    head.chunked = chunked


def _split_target(head):
    target = head.target
    if target[:1] == b"/":
        path = target
    elif target == b"*":
        if head.method != "OPTIONS":
            raise HTTPError(400, "asterisk-form is for OPTIONS only")
        path = b"*"
    elif head.method == "CONNECT":  # authority-form: host:port
        if b"/" in target or b":" not in target:
            raise HTTPError(400, "CONNECT needs host:port")
        head.path, head.query = b"", b""
        return
    else:
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https") or not rest:
            raise HTTPError(400, "the request target is not a path or an http(s) URL")
        slash = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        path = rest[slash:]
        if path[:1] != b"/":
            path = b"/" + path
    path = path.partition(b"#")[0]
    head.path, _, head.query = path.partition(b"?")


_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE = range(7)


class RequestReader:
    """Feeds bytes, calls ``handler.on_head(head)``, ``on_body(data)``, ``on_end()``.

    on_head may return True to stop reading (the connection is taken over: an upgrade).
    After a request that does not keep the connection, the reader stops: bytes after it
    are not parsed (a close-marked request is answered, the next one is not)."""

    __slots__ = ("handler", "limits", "buffer", "state", "remaining", "body_bytes",
                 "scanned", "started", "head", "parser")

    def __init__(self, handler, limits, parser=None):
        """parser: the HeadParser of the thread this reader is fed on (made if None)."""
        self.handler = handler
        self.limits = limits
        self.buffer = bytearray()
        self.state = _HEAD
        self.remaining = 0
        self.body_bytes = 0
        self.scanned = 0       # head: bytes of buffer already searched for the blank line
        self.started = False   # head: a byte of the next request has arrived
        self.head = None
        self.parser = parser or HeadParser()

    def release(self):
        """The connection is closed: drop the handler, which refers back to this reader,
        so the pair is freed at once rather than by the cyclic GC."""
        self.handler = None

    @property
    def idle(self):
        """No request in progress and nothing buffered: safe to close or hand back."""
        return self.state == _HEAD and not self.buffer

    @property
    def head_pending(self):
        """Between requests or inside a head (not in a body)."""
        return self.state == _HEAD

    @property
    def stopped(self):
        return self.state == _DONE

    def feed(self, data):
        if self.state == _HEAD and not self.buffer and data[-4:] == b"\r\n\r\n" \
                and len(data) <= self.limits.short_head and data.find(b"\r\n\r\n") == len(data) - 4 \
                and data[:2] != b"\r\n":
            self._take_head(data)  # one whole head and nothing else: most requests
            return
        if self.state == _DONE:
            return
        buffer = self.buffer
        buffer += data
        while buffer and self.state != _DONE:
            state = self.state
            if state == _HEAD:
                if not self._head():
                    return
            elif state == _BODY:
                take = min(self.remaining, len(buffer))
                self.handler.on_body(bytes(buffer[:take]))
                del buffer[:take]
                self.remaining -= take
                if not self.remaining:
                    self._end()
            elif state == _CHUNK_DATA:
                take = min(self.remaining, len(buffer))
                self.handler.on_body(bytes(buffer[:take]))
                del buffer[:take]
                self.remaining -= take
                if not self.remaining:
                    self.state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise HTTPError(400, "chunk data not followed by CRLF")
                del buffer[:2]
                self.state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                if not self._chunk_size():
                    return
            elif state == _TRAILERS:
                if not self._trailers():
                    return

    def _head(self):
        buffer = self.buffer
        if not self.started:
            # RFC 9112 §2.2: ignore empty lines before a request line.
            while buffer[:2] == b"\r\n":
                del buffer[:2]
            if not buffer or buffer == b"\r":
                return False
            self.started = True
        end = buffer.find(b"\r\n\r\n", self.scanned)
        if end < 0:
            self._check_partial()
            self.scanned = max(0, len(buffer) - 3)
            return False
        raw = bytes(buffer[:end + 4])
        del buffer[:end + 4]
        self.scanned = 0
        self.started = False
        if len(raw) > self.limits.short_head:
            _check_lines(raw, self.limits)
        return self._take_head(raw)

    def _take_head(self, raw):
        head = self.parser.parse(raw, self.limits)
        self.head = head
        if head.content_length is not None and head.content_length > self.limits.body:
            raise HTTPError(413, "request body too large")
        if self.handler.on_head(head):
            self.state = _DONE
            return False
        self.body_bytes = 0
        if head.chunked:
            self.state = _CHUNK_SIZE
        elif head.content_length:
            self.state, self.remaining = _BODY, head.content_length
        else:
            self._end()
        return True

    def _check_partial(self):
        """A head still arriving: over a limit already? Counted on what is buffered."""
        buffer, limits = self.buffer, self.limits
        first = buffer.find(b"\r\n")
        if first < 0:
            if len(buffer) > limits.line:
                raise HTTPError(414, "request line too long")
            return
        last = buffer.rfind(b"\n")
        if len(buffer) - last - 1 > limits.field_size - 2 or len(buffer) > limits.head:
            raise HTTPError(431, "request header fields too large")
        if buffer.count(b"\n") > limits.fields + 1:
            raise HTTPError(431, "too many header fields")

    def _chunk_size(self):
        buffer = self.buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > 4096:
                raise HTTPError(400, "chunk size line too long")
            return False
        line = bytes(buffer[:end])
        del buffer[:end + 2]
        size, _, extension = line.partition(b";")
        # RFC 9112 §7.1.1: BWS is allowed before ';' of an extension, nowhere else.
        if extension:
            size = size.rstrip(b" \t")
            if b"\r" in extension or b"\n" in extension or b"\0" in extension:
                raise HTTPError(400, "invalid chunk extension")
        if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
            raise HTTPError(400, "invalid chunk size")
        size = int(size, 16)
        if size == 0:
            self.state = _TRAILERS
            return True
        self.body_bytes += size
        if self.body_bytes > self.limits.body:
            raise HTTPError(413, "request body too large")
        self.state, self.remaining = _CHUNK_DATA, size
        return True

    def _trailers(self):
        buffer = self.buffer
        if buffer[:2] == b"\r\n":
            del buffer[:2]
            self._end()
            return True
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self.limits.head:
                raise HTTPError(431, "trailers too large")
            return False
        raw = bytes(buffer[:end])
        del buffer[:end + 4]
        # Trailers are read and checked, never merged into the headers the app sees.
        for line in raw.split(b"\r\n"):
            name, colon, _ = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise HTTPError(400, "invalid trailer field")
            if name.lower() in _FORBIDDEN_TRAILERS:
                raise HTTPError(400, "field not allowed in trailers")
        self._end()
        return True

    def _end(self):
        self.state = _HEAD if self.head.keep_alive else _DONE
        self.handler.on_end()
