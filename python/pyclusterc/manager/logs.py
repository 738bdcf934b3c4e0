"""The primary's log sink: every line the cluster prints goes through ``logging`` here.

    worker N stdout pipe ─► output relay ─► sink.worker_line(N, "stdout", b"...") ─┐
    worker N stderr pipe ─► output relay ─► sink.worker_line(N, "stderr", b"...") ─┤
    the primary itself   ─────────────────► sink.primary_line("info", "ready ...") ─┤
                                                                                    ▼
         loggers  pyclusterc.worker.stdout | pyclusterc.worker.stderr | pyclusterc.primary
                                                                                    ▼
      default: text "2026-12-01T21:39:25.123+00:00 [N] line" or JSON lines, to the
      primary's stdout/stderr, or to --log-file / --error-log-file (stdout and stderr apart,
      as PM2's -o/-e), rotated by size with --log-max-size; or whatever --log-config says.

Each record carries ``worker`` (the worker id, or ``"primary"``) and ``stream``
(``"stdout"``, ``"stderr"`` or ``"primary"``), so a ``--log-config`` format can use
``%(worker)s`` and ``%(stream)s``. The sink configures only its own ``pyclusterc.*``
loggers (``propagate = False`` unless ``--log-config`` is given): the root logger — the
app's — is never touched.

What the caller (the ProcessManager / output relay) must do:

- ``sink = LogSink.from_options(settings, stdout=relay_out_fd, stderr=relay_err_fd)`` in
  the primary before forking; ``settings`` is a mapping or an object with the ``OPTIONS``
  names below (missing ones take their defaults). ``stdout``/``stderr`` are the fds the
  primary really prints to (the relay's dups of 1 and 2, which stay put while fork swaps
  fds 1/2 for the worker pipes); the sink never closes them. ``LogConfigError`` is one
  line naming the file and the problem.
- From the relay thread, per complete line: ``sink.worker_line(worker_id, "stdout" |
  "stderr", line)`` (bytes or str; a trailing newline is stripped), or for what one read
  of the pipe brought, ``sink.worker_chunk(worker_id, stream, b"line\\nline")``. From any thread, for
  the primary's own messages: ``sink.primary_line("info" | "warning" | "error" | ...,
  text)``; warnings and errors go to the stderr side. Handlers lock, so threads may mix.
- On ``USR1`` (in the loop, not the signal handler): ``sink.reopen()`` — every log file is
  opened again by name (logrotate's move-then-signal); harmless with no files.
- ``sink.close()`` after the relay drained.
"""
import datetime
import json
import logging
import logging.config
import logging.handlers
import os

from .._lowlevel.options import Option, choice, count, size, text

__all__ = ["LogSink", "LogConfigError", "OPTIONS", "load_log_config"]

_GROUP = "logging"

OPTIONS = (
    Option("log_file", None, "write the workers' stdout and the primary's lines to FILE (and their "
           "stderr too, unless --error-log-file is given)", parse=text, metavar="FILE", group=_GROUP),
    Option("error_log_file", None, "write the workers' stderr and the primary's warnings and errors "
           "to FILE (PM2's -e)", parse=text, metavar="FILE", group=_GROUP),
    Option("log_format", "text", "text: 'TIME [WORKER] line' (default); json: one JSON object a line",
           parse=choice("text", "json"), metavar="text|json", group=_GROUP),
    Option("log_time", True, "prefix each line with its time (default on; --no-log-time when the "
           "supervisor stamps lines itself, e.g. journald)", negatable=True, group=_GROUP),
    Option("log_config", None, "configure logging from FILE: .json or .toml (logging.config.dictConfig) "
           "or .ini/.conf/.cfg (fileConfig), as gunicorn's --log-config", parse=text, metavar="FILE",
           group=_GROUP),
    Option("log_max_size", None, "rotate a log file when it passes SIZE, e.g. 10M (default: never)",
           parse=size, metavar="SIZE", file_types=(int, str), group=_GROUP),
    Option("log_backups", 5, "rotated files kept per log file with --log-max-size (default 5)",
           parse=count, metavar="N", file_types=(int,), group=_GROUP),
)

_DEFAULTS = {option.name: option.default for option in OPTIONS}
_ABANDONED = []  # a forked worker's copies of the primary's streams: kept, never flushed
_BY_NAME = {option.name: option for option in OPTIONS}
_LOGGERS = ("pyclusterc.worker.stdout", "pyclusterc.worker.stderr", "pyclusterc.primary")


class LogConfigError(ValueError):
    """A --log-config or log file that cannot be used: one line."""


class _TextFormatter(logging.Formatter):
    def __init__(self, with_time):
        super().__init__()
        self.with_time = with_time

    def format(self, record):
        line = f"[{record.worker}] {record.getMessage()}"
        return f"{_iso(record.created)} {line}" if self.with_time else line


class _JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": _iso(record.created), "worker": record.worker, "stream": record.stream,
                 "level": record.levelname.lower(), "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _iso(created):
    return datetime.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class _Route(logging.Handler):
    """The primary's records: below WARNING to the stdout side, the rest to stderr's."""

    def __init__(self, out, err):
        super().__init__()
        self.out, self.err = out, err

    def emit(self, record):
        (self.err if record.levelno >= logging.WARNING else self.out).handle(record)


def load_log_config(path):
    """Apply a --log-config file: JSON/TOML through dictConfig, INI through fileConfig."""
    kind = os.path.splitext(path)[1].lower()
    try:
        if kind in (".ini", ".conf", ".cfg"):
            logging.config.fileConfig(path, disable_existing_loggers=False)
            return
        if kind == ".json":
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        elif kind == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            with open(path, "rb") as f:
                config = tomllib.load(f)
        else:
            raise LogConfigError(f"invalid --log-config {path!r}: use a .json, .toml (dictConfig) "
                                 "or .ini/.conf/.cfg (fileConfig) file")
        if not isinstance(config, dict):
            raise LogConfigError(f"invalid --log-config {path!r}: expected a dictConfig table")
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)  # the app's loggers live on
        logging.config.dictConfig(config)
    except LogConfigError:
        raise
    except FileNotFoundError:
        raise LogConfigError(f"invalid --log-config {path!r}: no such file") from None
    except Exception as e:  # noqa: BLE001 - json/toml/configparser/dictConfig each raise their own
        detail = " ".join(str(e).split()) or type(e).__name__
        raise LogConfigError(f"invalid --log-config {path!r}: {detail}") from None


def _write_batch(handler, data, stream):
    """Stamped lines (str to the handler's text stream, or bytes to its binary buffer,
    after what the text layer holds) under the handler's lock."""
    handler.acquire()
    try:
        if stream is not handler.stream:
            handler.stream.flush()
        stream.write(data)
        stream.flush()
    except Exception:  # noqa: BLE001 - as logging does: a failed write must not end the relay
        handler.handleError(logging.makeLogRecord({"msg": data}))
    finally:
        handler.release()


class LogSink:
    """Routes worker and primary lines through logging (see the module docstring)."""

    def __init__(self, *, log_file=None, error_log_file=None, log_format="text", log_time=True,
                 log_config=None, log_max_size=None, log_backups=5, stdout=None, stderr=None,
                 level=logging.INFO):
        self._owned = []      # streams we opened, closed with the sink
        self._fds = []        # fds of our streams and files (a forked worker closes them)
        self._installed = []  # (logger, handler) pairs to remove on close
        self.files = [p for p in (log_file, error_log_file) if p]
        self.loggers = {name: logging.getLogger(name) for name in _LOGGERS}
        self._direct = {}     # stream -> handler a worker's plain text lines are written to
        self._stamp = (0, "")
        if log_config:
            load_log_config(log_config)
            for logger in self.loggers.values():
                logger.propagate = True
            return
        formatter = _JsonFormatter() if log_format == "json" else _TextFormatter(log_time)
        out = self._handler(log_file, stdout, 1, log_max_size, log_backups)
        err = (self._handler(error_log_file, None, None, log_max_size, log_backups) if error_log_file
               else out if log_file else self._handler(None, stderr, 2, None, 0))
        for handler in {out, err}:
            handler.setFormatter(formatter)
        if log_format == "text" and not log_max_size:
            # Workers' lines (access logs: one per request) skip logging's per-record
            # machinery: one timestamp and one write per batch the relay read.
            self._direct = {"stdout": out, "stderr": err}
        self._with_time = log_time
        for name, handler in zip(_LOGGERS, (out, err, _Route(out, err))):
            logger = self.loggers[name]
            logger.propagate = False
            logger.setLevel(level)
            logger.addHandler(handler)
            self._installed.append((logger, handler))

    @classmethod
    def from_options(cls, settings, stdout=None, stderr=None):
        """OptionError (one line) for a bad value; LogConfigError for a file that cannot be used."""
        def read(name):
            return settings.get(name) if isinstance(settings, dict) else getattr(settings, name, None)

        def get(name):  # values already parsed pass through; text (a file's) is parsed here
            value = read(name)
            return _DEFAULTS[name] if value is None else _BY_NAME[name].convert(value)
        level = str(read("log_level") or "info").upper()
        return cls(stdout=stdout, stderr=stderr,
                   level=5 if level == "TRACE" else getattr(logging, level, logging.INFO),
                   **{name: get(name) for name in _DEFAULTS})

    def _handler(self, path, stream, default_fd, max_size, backups):
        if path:
            try:
                if max_size:
                    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_size,
                                                                   backupCount=max(1, backups), encoding="utf-8")
                else:
                    handler = logging.FileHandler(path, encoding="utf-8")
                self._fds.append(handler.stream.fileno())
                return handler
            except OSError as e:
                raise LogConfigError(f"cannot open log file {path!r}: {e.strerror}") from None
        if stream is None:
            stream = os.dup(default_fd)  # ours to close; fd 1/2 themselves move during forks
            owned = True
        else:
            owned = False
        if isinstance(stream, int):
            if owned:
                self._fds.append(stream)
            stream = open(stream, "w", encoding="utf-8", errors="replace", buffering=1, closefd=owned)
            self._owned.append(stream)
        return logging.StreamHandler(stream)

    # -- the caller's API --------------------------------------------------------------
    def worker_chunk(self, worker_id, stream, chunk):
        """Complete lines of one worker's stream joined by newlines, without the last
        one (bytes, as the relay read them off the pipe)."""
        stream = "stderr" if stream in ("stderr", 2) else "stdout"
        handler = self._direct.get(stream)
        if (handler is None or getattr(handler, "stream", None) is None
                or not self.loggers["pyclusterc.worker." + stream].isEnabledFor(logging.INFO)):
            for line in chunk.split(b"\n"):
                self.worker_line(worker_id, stream, line)
            return
        prefix = f"[{worker_id}] "
        if self._with_time:
            prefix = f"{self._now()} {prefix}"
        chunk = bytes(chunk)
        binary = getattr(handler.stream, "buffer", None)
        if binary is not None and chunk.isascii() and b"\r" not in chunk:
            # An access log's batch: stamped as bytes, without the decode and encode
            # (half the copies of a 64 KiB read; the relay's CPU per line is ~1% of a
            # hello-world request's).
            stamp = prefix.encode()
            _write_batch(handler, b"".join((stamp, chunk.replace(b"\n", b"\n" + stamp), b"\n")), binary)
            return
        text = chunk.decode("utf-8", "replace")
        if "\r" in text:  # CRLF ends: strip as worker_line does (rare; per line)
            text = "\n".join(line.rstrip("\r") for line in text.split("\n"))
        # The whole batch (an access log flush: hundreds of lines) in a few C calls.
        _write_batch(handler, prefix + text.replace("\n", "\n" + prefix) + "\n", handler.stream)

    def _now(self):
        """The stamp _TextFormatter writes, computed at most once a millisecond."""
        import time
        now = time.time()
        millis = int(now * 1000)
        if millis != self._stamp[0]:
            self._stamp = (millis, _iso(now))
        return self._stamp[1]

    def worker_line(self, worker_id, stream, line):
        if isinstance(line, (bytes, bytearray, memoryview)):
            line = bytes(line).decode("utf-8", "replace")
        stream = "stderr" if stream in ("stderr", 2) else "stdout"
        self.loggers["pyclusterc.worker." + stream].info(
            line.rstrip("\r\n"), extra={"worker": worker_id, "stream": stream})

    def primary_line(self, level, text):
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
            level = level if isinstance(level, int) else logging.INFO
        self.loggers["pyclusterc.primary"].log(level, text, extra={"worker": "primary", "stream": "primary"})

    def reopen(self):
        """Open every log file again by its name (after logrotate moved it)."""
        for handler in self._file_handlers():
            try:
                new = open(handler.baseFilename, handler.mode, encoding=handler.encoding)
            except OSError as e:
                self.primary_line("error", f"pyclusterc: cannot reopen {handler.baseFilename}: {e.strerror}")
                continue
            self._fds.append(new.fileno())
            old = handler.setStream(new)  # flushes the old stream under the handler's lock
            if old is not None and old is not new:
                if old.fileno() in self._fds:
                    self._fds.remove(old.fileno())
                old.close()

    def _file_handlers(self):
        seen = []
        loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                           if isinstance(logger, logging.Logger)]
        for logger in loggers:
            for handler in logger.handlers:
                if isinstance(handler, logging.FileHandler) and handler not in seen:
                    seen.append(handler)
        return seen

    def forget_in_child(self):
        """In a forked worker, first thing: let go of the primary's handlers without
        touching their streams. Another thread of the primary (the relay) may have held a
        stream's buffer lock at the fork; flushing or closing it here — as a dictConfig
        in the app or in uvicorn does with every handler — would block forever. The
        objects are kept (never freed: freeing would flush), their fds closed."""
        for logger, handler in self._installed:
            logger.removeHandler(handler)
            stream = getattr(handler, "stream", None)
            if stream is not None:
                _ABANDONED.append(stream)
                handler.stream = None  # flush() and close() skip a handler without a stream
        self._installed.clear()
        _ABANDONED.extend(self._owned)
        self._owned = []
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def close(self):
        closed = set()
        for logger, handler in self._installed:
            logger.removeHandler(handler)
            if id(handler) not in closed:
                closed.add(id(handler))
                handler.close()
        self._installed.clear()
        for stream in self._owned:
            try:
                stream.close()
            except OSError:
                pass
        self._owned.clear()
