"""``pyclusterc run TARGET``: serve an ASGI or WSGI app, or a script, on every core.

The primary binds the addresses, forks the workers and restarts the ones that crash;
each worker loads the app and serves the connections the primary hands it. A worker
that cannot load the app exits with APP_LOAD_ERROR after telling the primary why, and
the primary prints that once and stops instead of respawning in a loop.
"""
import argparse
import collections
import gc
import heapq
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
import types

from ..manager import config as settings_file
from ..manager.config import ConfigError

# Exit status of a worker that could not load the app or listen (gunicorn's APP_LOAD_ERROR).
APP_LOAD_ERROR = 4

_ENV_SETTINGS = "PYCLUSTERC_RUN_SETTINGS"
_INTERFACES = ("auto", "asgi", "wsgi", "script")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class AppError(Exception):
    """The app could not be loaded: one line, plus the traceback when the app raised."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


# ---- argument parsing ------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser():
    from .. import __version__
    parser = _Parser(prog="pyclusterc",
                     description="Node.js cluster for Python: serve an app on every core.")
    parser.add_argument("--version", action="version", version=f"pyclusterc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="serve an ASGI/WSGI app or run a script in N workers",
        description="Serve TARGET in a cluster of worker processes. Settings can also come from "
                    "[tool.pyclusterc] in pyproject.toml or from pyclusterc.toml; flags win.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  pyclusterc run myapp:app -i max -b 0.0.0.0:8000\n"
               "  pyclusterc run myapp.wsgi --threads 16 --preload\n"
               "  pyclusterc run server.py -i 4")
    run.error = parser.error
    run.add_argument("target", metavar="TARGET", nargs="?",
                     help="module:attr (ASGI or WSGI app, detected), module (uses its `app` or "
                          "`application`), or path/to/script.py (runs in each worker)")
    run.add_argument("--app-dir", metavar="DIR", help="put DIR first on sys.path (default: .)")
    run.add_argument("-i", "--instances", metavar="N|max|-N",
                     help="worker count: N, max (usable CPUs: affinity and cgroup quota), "
                          "or -N (max minus N); default max")
    run.add_argument("-b", "--bind", action="append", metavar="ADDRESS",
                     help="HOST:PORT, [::1]:PORT, unix:PATH or fd://N; repeatable; default "
                          "127.0.0.1:8000 (systemd LISTEN_FDS are used when present)")
    run.add_argument("--interface", choices=_INTERFACES, help="default auto: detect ASGI/WSGI")
    run.add_argument("--sched", choices=("rr", "least", "sticky", "none", "reuseport"),
                     help="how connections reach workers; default rr (round-robin by the primary)")
    run.add_argument("--threads", type=_positive_int, metavar="N",
                     help="threads per worker: WSGI request threads (default 8); ASGI event "
                          "loops, each with its own lifespan (default 1)")
    run.add_argument("--preload", action="store_true", default=None,
                     help="import the app once in the primary (then gc.freeze()) before forking the "
                          "workers; without it each worker imports the app after the fork")
    run.add_argument("--name", help="a name for this cluster (used by the control commands)")
    run.add_argument("--env", action="append", metavar="K=V", help="set an environment variable; repeatable")
    run.add_argument("--log-level", choices=_LOG_LEVELS, help="default info")
    run.add_argument("--access-log", action="store_true", default=None, help="log every request")
    run.add_argument("--forwarded-allow-ips", metavar="IPS",
                     help="ASGI: trust X-Forwarded-For/-Proto from these comma-separated IPs or "
                          "networks, '*' for any (default $FORWARDED_ALLOW_IPS or 127.0.0.1, as uvicorn)")
    run.add_argument("--keep-alive", type=_seconds, metavar="SECONDS",
                     help="close a keep-alive connection idle this long (default 5, uvicorn's)")
    run.add_argument("--kill-timeout", type=_seconds, metavar="SECONDS",
                     help="on stop, how long in-flight requests may take before workers are "
                          "killed (default 1.6, PM2's; '1600ms' also works)")
    pm = run.add_argument_group("process management (PM2's names; durations in seconds or '500ms')")
    pm.add_argument("--listen-timeout", type=_seconds, metavar="SECONDS",
                    help="on reload, how long a new worker may take to listen (or to call "
                         "pyclusterc.ready() with --wait-ready) before the old one is replaced "
                         "anyway (default 3)")
    pm.add_argument("--wait-ready", action="store_true", default=None,
                    help="a worker is ready when it calls pyclusterc.ready(), not when it listens")
    pm.add_argument("--max-restarts", type=_count, metavar="N",
                    help="stop after N crashes in a row, each before --min-uptime (default 16)")
    pm.add_argument("--min-uptime", type=_seconds, metavar="SECONDS",
                    help="a worker that dies sooner counts as unstable (default 1)")
    pm.add_argument("--exp-backoff-restart-delay", type=_seconds, metavar="SECONDS",
                    help="wait this long before restarting a crashed worker, x1.5 per crash in a "
                         "row up to 15 s, reset after 30 s up (default: restart at once)")
    pm.add_argument("--max-memory-restart", type=_memory, metavar="SIZE",
                    help="replace a worker (gracefully) whose RSS passes SIZE, e.g. 300M or 1G")
    pm.add_argument("--max-requests", type=_count, metavar="N",
                    help="replace a worker (gracefully) after about N requests (default 0: never)")
    pm.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                    help="kill and replace a worker whose loop made no progress for this long "
                         "(default 30; 0 turns it off)")
    for command, text in (("status", "show the workers of a running cluster"),
                          ("reload", "replace every worker, one at a time, without dropping a request"),
                          ("restart", "replace every worker at once"),
                          ("stop", "stop a running cluster gracefully"),
                          ("metrics", "print a running cluster's metrics in Prometheus text format"),
                          ("monit", "show the status table, refreshed, until Ctrl-C"),
                          ("scale", "set the worker count of a running cluster")):
        sub = commands.add_parser(command, help=text, description=text + ".")
        sub.error = parser.error
        if command == "scale":
            sub.add_argument("count", metavar="N", type=_positive_int, help="the new worker count")
        sub.add_argument("name", metavar="NAME", nargs="?", default="default",
                         help="the cluster's --name (default: default)")
        if command == "monit":
            sub.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                             help="refresh period (default 1)")
            sub.add_argument("--once", action="store_true", help="print the table once and exit")
    return parser


def _count(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


_MEMORY_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _memory(text):
    """PM2's sizes: 1024 (bytes), 512K, 300M, 1G (powers of 1024)."""
    upper = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (upper[:-1], upper[-1]) if upper[-1:].isalpha() else (upper, "")
    if unit not in _MEMORY_UNITS or not number.replace(".", "", 1).isdigit() or float(number) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size like 300M, 1G or 512K, got {text!r}")
    return int(float(number) * _MEMORY_UNITS[unit])


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _seconds(text):
    try:
        value = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (e.g. 1.6 or 1600ms), got {text!r}") from None
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError(f"expected 0 to 86400 seconds, got {text!r}")
    return value


def _check_networks(text):
    import ipaddress
    for item in text.split(","):
        item = item.strip()
        try:
            if item != "*":
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"invalid forwarded-allow-ips entry {item!r}; use IPs or networks "
                              "(10.0.0.0/8), comma-separated, or '*'") from None


def resolve_settings(args, directory="."):
    """DEFAULTS < config file < flags, checked. Raises UsageError/ConfigError."""
    from_file, _ = settings_file.load_file(directory)
    merged = dict(settings_file.DEFAULTS)
    merged.update(from_file)
    for key, value in vars(args).items():
        if key != "command" and value is not None:
            merged[key] = value
    if merged.get("target") is None:
        merged["target"] = merged.pop("app", None)
    merged.pop("app", None)
    if not merged["target"]:
        raise UsageError("missing TARGET: give module:attr, a module, or path/to/script.py")
    for key, choices in (("interface", _INTERFACES), ("log_level", _LOG_LEVELS),
                         ("sched", ("rr", "least", "sticky", "none", "reuseport"))):
        if merged[key] not in choices:
            raise ConfigError(f"invalid {key.replace('_', '-')} {merged[key]!r}; use one of {', '.join(choices)}")
    merged["instances"] = settings_file.resolve_instances(merged["instances"])
    if merged["forwarded_allow_ips"] is not None:
        _check_networks(merged["forwarded_allow_ips"])
    if isinstance(merged["max_memory_restart"], str):
        try:
            merged["max_memory_restart"] = _memory(merged["max_memory_restart"])
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"invalid max-memory-restart: {e}") from None
    for key in ("listen_timeout", "min_uptime", "timeout", "kill_timeout", "keep_alive"):
        if merged[key] < 0:
            raise ConfigError(f"invalid {key.replace('_', '-')} {merged[key]!r}: expected seconds >= 0")
    if merged["name"] is not None:
        from ..manager.control import ControlError, check_name
        try:
            check_name(merged["name"])
        except ControlError as e:
            raise UsageError(str(e)) from None
    env = {}
    for item in merged["env"]:
        key, sep, value = item.partition("=")
        if not sep or not key or "\0" in item:
            raise UsageError(f"invalid --env {item!r}: use KEY=VALUE")
        env[key] = value
    merged["env"] = env
    target = merged["target"]
    script = target.endswith(".py") and ":" not in target
    if merged["interface"] == "auto" and script:
        merged["interface"] = "script"
    if merged["interface"] == "script" and not script:
        raise UsageError(f"conflicting options: --interface script needs a path/to/script.py, got {target!r}")
    if merged["interface"] == "script" and merged["preload"]:
        raise UsageError("conflicting options: --preload imports an app; a script runs in each worker")
    if merged["threads"] is not None and merged["interface"] == "script":
        raise UsageError("conflicting options: --threads is for WSGI and ASGI apps; a script runs its own")
    return merged


# ---- addresses -------------------------------------------------------------------

def parse_binds(binds, sched, explicit):
    """(kind, value) per bind: ("address", (family, sockaddr)) or ("socket", sock)."""
    from ..cluster import parse_address
    result = []
    for text in systemd_sockets():
        result.append(("socket", text))
    if result and not explicit:
        binds = []
    for text in binds:
        if text.startswith("fd://"):
            result.append(("socket", _socket_from_fd(text)))
            continue
        try:
            family, sockaddr = parse_address(text, default_host="127.0.0.1")
        except ValueError:
            raise UsageError(f"invalid --bind {text!r}: use HOST:PORT, [::1]:PORT, unix:PATH or fd://N") from None
        result.append(("address", (family, sockaddr)))
    if sched == "reuseport" and any(kind == "socket" for kind, _ in result):
        raise UsageError("conflicting options: --sched reuseport binds a socket per worker; "
                         "it cannot use fd:// or systemd sockets")
    return result


def _socket_from_fd(text):
    number = text[5:]
    if not number.isdigit():
        raise UsageError(f"invalid --bind {text!r}: fd:// takes a file descriptor number")
    try:
        sock = socket.socket(fileno=int(number))
    except OSError:
        raise UsageError(f"invalid --bind {text!r}: fd {number} is not an open socket") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise UsageError(f"invalid --bind {text!r}: fd {number} is not a listening stream socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def systemd_sockets():
    """Listening sockets passed by systemd socket activation (sd_listen_fds)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # our workers must not take them for their own
    return [_socket_from_fd(f"fd://{fd}") for fd in range(3, 3 + count)]


def _display(family, sockaddr):
    from ..cluster import format_address
    return format_address(sockaddr) if family == socket.AF_UNIX else "http://" + format_address(sockaddr)


def bind_all(binds):
    """Create the listening sockets in the primary (so 'address in use' is caught here,
    once) and register them with the cluster. Returns the worker-side address strings."""
    from .. import cluster
    from ..cluster import format_address
    addresses = []
    for kind, value in binds:
        if kind == "socket":
            family, sockaddr = _adopt(value)
        else:
            family, sockaddr = value
            if family == socket.AF_UNIX:
                _remove_stale_unix_socket(sockaddr)
            server = cluster._state.server_for(family, sockaddr, 2048)
            sockaddr = server.address if family == socket.AF_UNIX else tuple(server.address[:2])
            if sockaddr != value[1]:  # port 0: register the real port too
                cluster._state.servers.setdefault((family, sockaddr), server)
        addresses.append((family, sockaddr))
        print(f"pyclusterc: listening on {_display(family, sockaddr)}", flush=True)
    return [format_address(addr) if fam != socket.AF_UNIX else f"unix:{addr}" for fam, addr in addresses]


def _adopt(sock):
    """Register an inherited listening socket (fd://, systemd) as a cluster server."""
    from .. import cluster
    family = sock.family
    name = sock.getsockname()
    sockaddr = name if family == socket.AF_UNIX else tuple(name[:2])
    cluster._state.add_server((family, sockaddr), sock, sockaddr)
    return family, sockaddr


def _remove_stale_unix_socket(path):
    """A socket file nobody listens on (a previous run) would make bind fail."""
    import stat
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


# ---- loading the app -------------------------------------------------------------

def load_target(target, interface, app_dir=None):
    """(app, interface) with interface resolved to "asgi" | "wsgi". Raises AppError."""
    _add_app_dir(app_dir)
    if target.endswith(".py") and ":" not in target:
        module_name, attrs, path = None, None, target
    else:
        module_name, _, attrs = target.partition(":")
        path = None
        if module_name.endswith(".py"):
            module_name, path = None, module_name
    if path is not None:
        if not os.path.isfile(path):
            raise AppError(f"cannot load {target!r}: no such file {path!r}")
        module = _import_file(path)
        label = path
    else:
        module = _import(module_name)
        label = module_name
    if attrs:
        app = module
        for part in attrs.split("."):
            try:
                app = getattr(app, part)
            except AttributeError:
                raise AppError(f"cannot load {target!r}: attribute {attrs!r} not found in {label!r}") from None
    else:
        for name in ("app", "application"):
            if hasattr(module, name):
                app, attrs = getattr(module, name), name
                break
        else:
            raise AppError(f"cannot load {target!r}: {label!r} has no `app` or `application`; "
                           "name it as module:attr")
    if not callable(app):
        raise AppError(f"cannot load {target!r}: {label}:{attrs} is not callable "
                       f"(it is {type(app).__name__}); point at an ASGI or WSGI app")
    if interface == "auto":
        interface = "asgi" if _is_asgi(app) else "wsgi"
    return app, interface


def _is_asgi(app):
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)
    return inspect.iscoroutinefunction(call) if not inspect.isfunction(app) else False


def _add_app_dir(app_dir):
    directory = os.path.abspath(app_dir or ".")
    if directory not in sys.path:
        sys.path.insert(0, directory)


def check_importable(target, app_dir):
    """In the primary, without running the app's code: is the module there at all?"""
    if target.endswith(".py") or target.partition(":")[0].endswith(".py"):
        path = target.partition(":")[0] if not target.endswith(".py") else target
        if not os.path.isfile(path):
            raise AppError(f"cannot load {target!r}: no such file {path!r}")
        return
    _add_app_dir(app_dir)
    module_name = target.partition(":")[0]
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppError(f"cannot load {target!r}: {module_name!r} is not a module name; "
                       "use module:attr or path/to/script.py")
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        spec = None
    except Exception:  # noqa: BLE001 - a parent package failed: the worker will say how
        return
    if spec is None:
        raise AppError(f"cannot load {target!r}: no module named {module_name!r} "
                       f"(searched {os.path.abspath(app_dir or '.')} and sys.path)")


def _import(module_name):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise AppError(f"cannot load {module_name!r}: no module named {e.name!r}") from None
        raise AppError(f"importing {module_name!r} failed: {type(e).__name__}: {e}",
                       _app_traceback(e)) from None
    except BaseException as e:  # noqa: BLE001 - whatever the app raised while importing
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AppError(f"importing {module_name!r} failed: {type(e).__name__}: {e}",
                       _app_traceback(e)) from None


def _import_file(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AppError(f"importing {path!r} failed: {type(e).__name__}: {e}",
                       _app_traceback(e)) from None
    return module


def _app_traceback(exc):
    """The traceback of an error raised by the app's code, without our frames and
    importlib's in front of it."""
    ours = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(importlib.__file__), "<frozen")
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(ours):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


# ---- the worker --------------------------------------------------------------------

def _stop_hooks():
    """on_stop(callback): callback runs once when this worker should stop gracefully —
    the primary disconnects it (its shutdown) or it gets TERM/INT itself."""
    from .. import cluster
    callbacks = []
    fired = threading.Event()

    def fire(*_):
        if fired.is_set():
            return
        fired.set()
        for callback in callbacks:
            callback()

    cluster.worker.on("disconnect", fire)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, fire)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def on_stop(callback):
        callbacks.append(callback)
        if fired.is_set():
            callback()
    return on_stop


def _fail(message, details=None):
    """Tell the primary why this worker cannot serve, then exit with APP_LOAD_ERROR."""
    from .. import cluster
    try:
        cluster.worker.send({"pyclusterc": "app_error", "message": message, "details": details})
    except Exception:  # noqa: BLE001 - already disconnected: the primary is stopping on
        pass           # another worker's report of the same error; say it once, not twice
    sys.stdout.flush()
    raise SystemExit(APP_LOAD_ERROR)


def worker_main(settings, app=None, interface=None, close_fds=()):
    """Load (unless preloaded), listen on every bind, serve until told to stop."""
    from .. import cluster
    for fd in close_fds:  # a forked (preloaded) worker: the primary's own loop fds
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the stop hooks are in place
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):  # meant for the primary
        signal.signal(signum, signal.SIG_IGN)
    if threading.current_thread() is threading.main_thread():
        signal.set_wakeup_fd(-1)  # a preloaded worker must not wake its primary's loop
    for key, value in settings["env"].items():
        os.environ[key] = value
    if settings["interface"] == "script":
        # Stopping closes the script's listeners: its accept loops end, then it returns.
        _stop_hooks()(cluster.worker.disconnect)
        _run_script(settings)
        return
    if app is None:
        try:
            app, interface = load_target(settings["target"], settings["interface"], settings["app_dir"])
        except AppError as e:
            _fail(str(e), e.details)
    _configure_logging(settings)
    listeners = []
    try:
        for address in settings["addresses"]:
            listeners.append(cluster.listen(address))
    except OSError as e:
        _fail(f"worker {cluster.worker.id}: {e}")
    on_stop = _stop_hooks()
    slot = getattr(cluster.worker, "_slot", None)
    hooks = types.SimpleNamespace(on_stop=on_stop, ready=lambda: None, slot=slot,
                                  heartbeat=_heartbeat(slot), live_counts=settings["sched"] == "least",
                                  hand_back=lambda sock: False)
    run_settings = types.SimpleNamespace(**settings)
    if interface == "asgi":
        from ..serve import asgi as serve_asgi
        code = serve_asgi.run(app, listeners, run_settings, hooks)
        if code == serve_asgi.LIFESPAN_FAILED:
            _fail("the app's lifespan startup failed (see its error above)")
    else:
        from ..serve import wsgi as serve_wsgi
        code = serve_wsgi.run(app, listeners, run_settings, hooks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # daemon threads (channel reader, pools) must not delay the exit


def _heartbeat(slot):
    """A callable stamping this worker's scoreboard slot: its loop is making progress
    (the primary kills a worker whose stamp is older than --timeout)."""
    if slot is None:
        return lambda: None
    from ..cluster import _U64_HEARTBEAT
    u64 = slot.u64
    return lambda stamp=None: u64.store(_U64_HEARTBEAT, stamp or time.monotonic_ns())


def _run_script(settings):
    import runpy
    path = settings["target"]
    sys.argv = [path]
    _add_app_dir(settings["app_dir"] or os.path.dirname(os.path.abspath(path)))
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the script's own error: shown once
        if isinstance(e, KeyboardInterrupt):
            raise SystemExit(0)
        _fail(f"{path} failed: {type(e).__name__}: {e}", _app_traceback(e))


def _configure_logging(settings):
    import logging
    level = settings["log_level"].upper()
    level = 5 if level == "TRACE" else getattr(logging, level)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")


# ---- the primary ---------------------------------------------------------------------

class OutputRelay:
    """Prefixes each worker's output lines with its id, e.g. "[2] started"."""

    def __init__(self):
        self.out = os.dup(1)
        self.err = os.dup(2)
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.pending = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="pyclusterc-output", daemon=True)
        self.thread.start()

    def fork(self, fork):
        """Run fork() with fds 1 and 2 pointing at fresh pipes; relay them under its id."""
        sys.stdout.flush()
        sys.stderr.flush()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            worker = fork()
        finally:
            os.dup2(self.out, 1)
            os.dup2(self.err, 2)
            os.close(out_w)
            os.close(err_w)
        prefix = f"[{worker.id}] ".encode()
        for fd, target in ((out_r, self.out), (err_r, self.err)):
            self.pending[fd] = b""
            self.selector.register(fd, selectors.EVENT_READ, (prefix, target))
        os.write(self.wake_w, b"x")
        return worker

    def _run(self):
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                prefix, target = key.data
                data = os.read(key.fd, 65536)
                if not data:
                    rest = self.pending.pop(key.fd)
                    if rest:
                        self._write(target, prefix + rest + b"\n")
                    self.selector.unregister(key.fd)
                    os.close(key.fd)
                    continue
                lines = (self.pending[key.fd] + data).split(b"\n")
                self.pending[key.fd] = lines.pop()
                if lines:
                    self._write(target, b"".join(prefix + line + b"\n" for line in lines))
            if self.stopping and len(self.selector.get_map()) == 1:
                return

    @staticmethod
    def _write(fd, data):
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            pass

    def drain(self, timeout=2.0):
        """After the workers exited: wait (bounded) for their last lines."""
        self.stopping = True
        os.write(self.wake_w, b"x")
        self.thread.join(timeout)


class Timers:
    """One-shot timers run by the primary's loop. cluster.py's loop has no timer hook, so
    a helper thread sleeps until the earliest deadline and wakes the loop through a pipe
    the loop watches; the callbacks themselves run in the loop's thread."""

    def __init__(self, watch):
        self.heap = []
        self.sequence = itertools.count()
        self.cond = threading.Condition()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        watch(self.wake_r, self.run_due)
        threading.Thread(target=self._sleeper, name="pyclusterc-timers", daemon=True).start()

    def call_later(self, delay, callback):
        """Returns a handle; handle.cancelled = True stops it from running."""
        handle = types.SimpleNamespace(when=time.monotonic() + max(0.0, delay), callback=callback,
                                       cancelled=False)
        with self.cond:
            heapq.heappush(self.heap, (handle.when, next(self.sequence), handle))
            self.cond.notify()
        return handle

    def _sleeper(self):
        with self.cond:
            while True:
                if not self.heap:
                    self.cond.wait()
                    continue
                left = self.heap[0][0] - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                try:
                    os.write(self.wake_w, b"t")
                except BlockingIOError:
                    pass
                self.cond.wait()  # until run_due has taken what is due

    def run_due(self):
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            with self.cond:
                if not self.heap or self.heap[0][0] > time.monotonic():
                    self.cond.notify()
                    return
                handle = heapq.heappop(self.heap)[2]
            if not handle.cancelled:
                handle.callback()

    def sleep_until_next(self):
        """Outside the loop (it returned with no worker left): wait for the next timer."""
        with self.cond:
            when = self.heap[0][0] if self.heap else time.monotonic()
        time.sleep(max(0.0, when - time.monotonic()))
        self.run_due()


class _WorkerInfo:
    """What the primary remembers about a worker beyond cluster.Worker: its start time
    and its slot's history (a replacement inherits restarts and the crash streak)."""

    def __init__(self, restarts=0, unstable=0, backoff=0.0):
        self.started = time.monotonic()
        self.restarts = restarts
        self.unstable = unstable  # crashes in a row, each before --min-uptime
        self.backoff = backoff    # the last --exp-backoff-restart-delay used
        self.listens = 0
        self.ready = False
        self.retiring = False


class _Replace:
    """Replace workers `batch` at a time (1: rolling reload, all: restart): fork a new
    one, wait until it is ready (or --listen-timeout), then disconnect the old one and
    let it drain within --kill-timeout. A new worker that dies first aborts the job and
    leaves the old ones serving."""

    def __init__(self, primary, what, batch, respond=None, choose=None):
        self.primary = primary
        self.what = what
        self.batch = batch
        self.respond = respond
        self.choose = choose or primary.serving_workers
        self.pending = {}   # new worker id -> (old worker, listen timer)
        self.replaced = []

    def start(self):
        self.queue = list(self.choose())
        self.started = time.monotonic()
        self.fill()

    def fill(self):
        primary = self.primary
        while self.queue and len(self.pending) < self.batch and not primary.stopping:
            old = self.queue.pop(0)
            if old.is_dead() or primary.info[old.id].retiring:
                continue
            new = primary.spawn(primary.info[old.id], crashed=False)
            timer = primary.timers.call_later(primary.settings["listen_timeout"],
                                              lambda n=new: self.on_ready(n, timed_out=True))
            self.pending[new.id] = (old, timer)
        if not self.pending:
            self.finish()

    def on_ready(self, worker, timed_out=False):
        entry = self.pending.pop(worker.id, None)
        if entry is None:
            return False
        old, timer = entry
        timer.cancelled = True
        if timed_out:
            print(f"pyclusterc: worker {worker.id} not ready within --listen-timeout "
                  f"{self.primary.settings['listen_timeout']:g} s; replacing worker {old.id} anyway", flush=True)
        self.replaced.append((old.pid, worker.pid))
        self.primary.retire(old)
        self.fill()
        return True

    def on_exit(self, worker, how):
        """A new worker died before it was ready: stop here, keep the old ones."""
        entry = self.pending.pop(worker.id, None)
        if entry is None:
            return False
        entry[1].cancelled = True
        self.queue = []
        self.error = f"{self.what} stopped: new worker {worker.id} died before it was ready ({how})"
        print(f"pyclusterc: {self.error}; the old workers keep serving", flush=True)
        if not self.pending:
            self.finish()
        return True

    def cancel(self):
        if self.respond is not None:
            self.respond({"ok": False, "error": f"{self.what} stopped: the cluster is stopping"})

    def finish(self):
        primary = self.primary
        error = getattr(self, "error", None)
        if error is None and self.replaced:
            primary.reloads += 1
            message = f"{self.what}: replaced {len(self.replaced)} worker(s) in {time.monotonic() - self.started:.1f} s"
            print(f"pyclusterc: {message}", flush=True)
        else:
            message = error or f"{self.what}: no worker to replace"
        if self.respond is not None:
            self.respond({"ok": error is None, "message": message, "error": error,
                          "replaced": self.replaced})
        primary.job_done(self)


class _Scale:
    """Fork or retire workers until `count` are serving; done when the new ones are
    ready (or --listen-timeout) and the retired ones have exited."""

    def __init__(self, primary, count, respond=None):
        self.primary = primary
        self.count = count
        self.respond = respond
        self.waiting = set()

    def start(self):
        primary = self.primary
        serving = primary.serving_workers()
        primary.wanted = self.count
        self.before = len(serving)
        for _ in range(self.count - len(serving)):
            new = primary.spawn()
            self.waiting.add(new.id)
            primary.timers.call_later(primary.settings["listen_timeout"], lambda n=new: self.on_ready(n))
        for old in sorted(serving, key=lambda w: w.id, reverse=True)[:max(0, len(serving) - self.count)]:
            self.waiting.add(old.id)
            primary.retire(old)
        if not self.waiting:
            self.finish()

    def on_ready(self, worker, timed_out=False):
        return self._done_with(worker)

    def on_exit(self, worker, how):
        return self._done_with(worker)

    def _done_with(self, worker):
        if worker.id not in self.waiting:
            return False
        self.waiting.discard(worker.id)
        if not self.waiting:
            self.finish()
        return False  # exits still get the usual handling (a crash is restarted)

    def cancel(self):
        if self.respond is not None:
            self.respond({"ok": False, "error": "scale stopped: the cluster is stopping"})

    def finish(self):
        message = f"scaled from {self.before} to {self.count} worker(s)"
        print(f"pyclusterc: {message}", flush=True)
        if self.respond is not None:
            self.respond({"ok": True, "message": message})
        self.primary.job_done(self)


def _rss(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Primary:
    # Restart delays grow x1.5 up to this; a worker up this long resets them (PM2's values).
    _BACKOFF_MAX, _BACKOFF_RESET = 15.0, 30.0
    _CHECK_PERIOD = 1.0  # --timeout, --max-memory-restart, --max-requests

    def __init__(self, settings, preloaded=None):
        from .. import cluster
        self.cluster = cluster
        self.settings = settings
        self.preloaded = preloaded
        self.relay = OutputRelay()
        self.stopping = False
        self.app_error = None
        self.started = time.monotonic()
        self.wanted = settings["instances"]
        self.info = {}             # worker id -> _WorkerInfo
        self.jobs = collections.deque()
        self.announced = False
        self.restarts = 0
        self.reloads = 0
        self.respawns_due = 0
        self.stop_replies = []
        self.control = None
        self.timers = None

    def start(self):
        cluster = self.cluster
        cluster.on("message", self.on_message)
        cluster.on("exit", self.on_exit)
        cluster.on("listening", self.on_listening)
        cluster.on("ready", self.on_ready_message)
        self.fork_env = {_ENV_SETTINGS: json.dumps(self.settings)}
        self.timers = Timers(cluster._state.watch)
        self.start_control()
        if self.settings["interface"] != "script":
            # Workers are forked from the primary, as gunicorn's: they share its pages
            # (the interpreter, pyclusterc, its dependencies). Without --preload each one
            # imports the app after the fork, so a reload picks up new code.
            app, interface = self.preloaded or (None, None)
            primary_fds = self.primary_only_fds()
            cluster.setup_primary(fork=True, target=lambda: worker_main(self.settings, app, interface,
                                                                       close_fds=primary_fds))
        self.watch_signals()
        for _ in range(self.wanted):
            self.spawn()
        s = self.settings
        print(f"pyclusterc: {s['instances']} worker{'s' if s['instances'] != 1 else ''} "
              f"({s['interface']}, sched {s['sched']}) for {s['target']}"
              + (f" [{s['name']}]" if s["name"] else ""), flush=True)
        self.timers.call_later(self._CHECK_PERIOD, self.check_limits)
        try:
            while True:
                cluster.run()
                if self.stopping or not self.respawns_due:
                    break
                self.timers.sleep_until_next()  # every worker is waiting out its restart delay
        finally:
            self.cancel_jobs()
            if self.control is not None:
                self.control.close()
        self.relay.drain()
        code = 0
        if self.app_error is not None:
            message, details = self.app_error
            if details:
                sys.stderr.write(details if details.endswith("\n") else details + "\n")
            print(f"pyclusterc: error: {message}", file=sys.stderr, flush=True)
            code = 1
        else:
            print("pyclusterc: stopped", flush=True)
        for respond in self.stop_replies:
            respond({"ok": code == 0, "message": "stopped", "error": self.app_error and self.app_error[0]})
        return code

    def primary_only_fds(self):
        """Fds a preloaded (forked) worker must close: they belong to the primary's loop."""
        fds = [self.timers.wake_r, self.timers.wake_w]
        if self.control is not None:
            fds.append(self.control.sock.fileno())
        return fds

    # -- the control socket -----------------------------------------------------------
    def start_control(self):
        from ..manager.control import ControlError, ControlServer
        name = self.settings["name"]
        state = self.cluster._state
        server = ControlServer(name or "default", self.on_control, state.watch, state.unwatch)
        try:
            server.start()
        except ControlError as e:
            if name is not None:
                raise UsageError(str(e)) from None
            # Unnamed clusters share "default": a second one runs without control commands.
            print(f"pyclusterc: warning: {e}; running without a control socket", file=sys.stderr, flush=True)
            return
        self.control = server

    def on_control(self, request, respond):
        cmd = request["cmd"]
        if cmd in ("status", "metrics"):
            respond(self.status())
        elif cmd == "reload":
            self.enqueue(_Replace(self, "reload", 1, respond))
        elif cmd == "restart":
            self.enqueue(_Replace(self, "restart", 1 << 30, respond))
        elif cmd == "scale":
            count = request.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1024:
                respond({"ok": False, "error": f"invalid worker count {count!r}: use 1 to 1024"})
                return
            self.enqueue(_Scale(self, count, respond))
        elif cmd == "stop":
            self.stop_replies.append(respond)
            self.stop()

    def status(self):
        now = time.monotonic()
        workers = []
        for worker in sorted(self.cluster.workers.values(), key=lambda w: w.id):
            info = self.info.get(worker.id) or _WorkerInfo()
            score = worker.score()
            state = ("disconnecting" if info.retiring else
                     "ready" if info.ready and self.settings["wait_ready"] else worker.state)
            workers.append({"id": worker.id, "pid": worker.pid, "state": state,
                            "uptime": now - info.started, "restarts": info.restarts,
                            "requests": score.get("requests", 0), "inflight": score.get("inflight", 0),
                            "connections": score.get("connections", 0), "rss": _rss(worker.pid)})
        s = self.settings
        busy = ", ".join(getattr(job, "what", "scale") for job in self.jobs)
        return {"name": s["name"] or "default", "pid": os.getpid(), "target": s["target"],
                "interface": s["interface"], "sched": s["sched"], "uptime": now - self.started,
                "instances": self.wanted, "restarts": self.restarts, "reloads": self.reloads,
                "busy": busy, "workers": workers}

    # -- signals: the handler only records; the loop acts (handle_<name>) --------------
    def watch_signals(self):
        """Signals are acted on in the cluster loop, not inside the handler (which may
        interrupt the main thread while it holds a channel's send lock): the handler
        records, and the wakeup fd makes the loop call back."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        received = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, lambda signum, frame: received.append(signum))
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

        def on_wakeup():
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            while received:
                getattr(self, "handle_" + signal.Signals(received.pop(0)).name[3:].lower())()
        self.cluster._state.watch(wake_r, on_wakeup)

    def handle_term(self):
        self.stop()

    handle_int = handle_term

    def handle_hup(self):
        self.enqueue(_Replace(self, "reload", 1))

    def handle_ttin(self):
        self.enqueue(_Scale(self, min(1024, self.wanted + 1)))

    def handle_ttou(self):
        self.enqueue(_Scale(self, max(1, self.wanted - 1)))

    def stop(self):
        if self.stopping:  # a second TERM/INT: do not wait any longer
            for worker in self.cluster.workers.values():
                worker.kill("SIGKILL")
            return
        self.stopping = True
        self.cancel_jobs()
        self.cluster.shutdown(timeout=self.settings["kill_timeout"])

    # -- workers --------------------------------------------------------------------------
    def spawn(self, lineage=None, crashed=False):
        """Fork a worker; a replacement inherits its predecessor's history."""
        worker = self.relay.fork(lambda: self.cluster.fork(self.fork_env))
        if lineage is None:
            self.info[worker.id] = _WorkerInfo()
        else:
            self.restarts += 1
            self.info[worker.id] = _WorkerInfo(lineage.restarts + 1, lineage.unstable if crashed else 0,
                                               lineage.backoff if crashed else 0.0)
        return worker

    def serving_workers(self):
        return [w for w in self.cluster.workers.values()
                if not w.is_dead() and w.id in self.info and not self.info[w.id].retiring]

    def retire(self, worker):
        """Disconnect on purpose: it drains, then exits; SIGKILL after --kill-timeout."""
        self.info[worker.id].retiring = True
        worker.disconnect()
        self.timers.call_later(self.settings["kill_timeout"],
                               lambda: worker.is_dead() or worker.kill("SIGKILL"))

    def enqueue(self, job):
        if self.stopping:
            if job.respond is not None:
                job.respond({"ok": False, "error": "the cluster is stopping"})
            return
        self.jobs.append(job)
        if len(self.jobs) == 1:
            job.start()

    def cancel_jobs(self):
        jobs = list(self.jobs)
        self.jobs.clear()
        for job in jobs:
            job.cancel()

    def job_done(self, job):
        if self.jobs and self.jobs[0] is job:
            self.jobs.popleft()
            if self.jobs and not self.stopping:
                self.jobs[0].start()

    # -- cluster events -------------------------------------------------------------------
    def on_message(self, worker, message):
        if isinstance(message, dict) and message.get("pyclusterc") == "app_error":
            if self.jobs and worker.id in getattr(self.jobs[0], "pending", ()):
                # A new version that does not load: say why; the old workers keep serving.
                details = message.get("details")
                if details:
                    sys.stderr.write(details if details.endswith("\n") else details + "\n")
                print(f"pyclusterc: error: {message.get('message')}", file=sys.stderr, flush=True)
                return
            self.stop_with_error(message.get("message", "the app failed to load"), message.get("details"))

    def stop_with_error(self, message, details=None):
        if self.app_error is None:
            self.app_error = (message, details)
        if not self.stopping:
            self.stop()

    def on_listening(self, worker, address):
        info = self.info.get(worker.id)
        if info is None:
            return
        info.listens += 1
        if info.listens == max(1, len(self.settings["addresses"])) and not self.settings["wait_ready"]:
            self.worker_ready(worker)

    def on_ready_message(self, worker):
        if self.settings["wait_ready"] and worker.id in self.info:
            self.worker_ready(worker)

    def worker_ready(self, worker):
        info = self.info[worker.id]
        if info.ready:
            return
        info.ready = True
        if self.jobs:
            self.jobs[0].on_ready(worker)
        if not self.announced:
            ready = sum(1 for w in self.serving_workers() if self.info[w.id].ready)
            if ready >= self.wanted:
                self.announced = True
                print(f"pyclusterc: ready, {ready} workers "
                      f"{'ready' if self.settings['wait_ready'] else 'listening'}", flush=True)

    def on_exit(self, worker, code, signal_name):
        info = self.info.pop(worker.id, None) or _WorkerInfo()
        how = f"signal {signal_name}" if signal_name else f"exit status {code}"
        if self.jobs and self.jobs[0].on_exit(worker, how):
            return
        if info.retiring or self.stopping:
            return
        if code == APP_LOAD_ERROR:
            self.stop_with_error(f"worker {worker.id} could not load the app (exit status {code})")
            return
        s = self.settings
        uptime = time.monotonic() - info.started
        info.unstable = info.unstable + 1 if uptime < s["min_uptime"] else 0
        if info.unstable > s["max_restarts"]:
            self.stop_with_error(f"worker {worker.id} keeps crashing: {info.unstable} exits in a row, each "
                                 f"within --min-uptime {s['min_uptime']:g} s (last: {how}); "
                                 f"--max-restarts is {s['max_restarts']}; stopping")
            return
        delay = 0.0
        if s["exp_backoff_restart_delay"]:
            base = s["exp_backoff_restart_delay"]
            delay = base if not info.backoff or uptime >= self._BACKOFF_RESET else min(info.backoff * 1.5, self._BACKOFF_MAX)
            info.backoff = delay
        print(f"pyclusterc: worker {worker.id} died ({how}); starting a new one"
              + (f" in {delay:.3g} s" if delay else ""), flush=True)
        if delay:
            self.respawns_due += 1
            self.timers.call_later(delay, lambda: self.respawn(info))
        else:
            self.spawn(info, crashed=True)

    def respawn(self, lineage):
        self.respawns_due -= 1
        if not self.stopping:
            self.spawn(lineage, crashed=True)

    # -- limits: --timeout, --max-memory-restart, --max-requests --------------------------
    def check_limits(self):
        if self.stopping:
            return
        from ..cluster import _U64_HEARTBEAT
        s = self.settings
        now_ns = time.monotonic_ns()
        for worker in self.serving_workers():
            heartbeat = worker._slot.u64.load(_U64_HEARTBEAT) if worker._slot else 0
            if s["timeout"] and heartbeat and now_ns - heartbeat > s["timeout"] * 1e9:
                print(f"pyclusterc: worker {worker.id} (pid {worker.pid}) is hung: no progress for "
                      f"{(now_ns - heartbeat) / 1e9:.1f} s (--timeout {s['timeout']:g}); killing it", flush=True)
                try:
                    os.kill(worker.pid, signal.SIGKILL)  # on_exit restarts it as a crash
                except ProcessLookupError:
                    pass
                continue
            if self.jobs:
                continue  # one replacement at a time; look again next period
            reason = None
            if s["max_memory_restart"]:
                rss = _rss(worker.pid)
                if rss is not None and rss > s["max_memory_restart"]:
                    reason = f"RSS {rss / 2**20:.0f} MiB > --max-memory-restart {s['max_memory_restart'] / 2**20:.0f} MiB"
            if s["max_requests"] and worker.score().get("requests", 0) >= s["max_requests"]:
                reason = f"{worker.score()['requests']} requests >= --max-requests {s['max_requests']}"
            if reason:
                print(f"pyclusterc: worker {worker.id}: {reason}; replacing it", flush=True)
                self.enqueue(_Replace(self, f"replace worker {worker.id}", 1, choose=lambda w=worker: [w]))
        self.timers.call_later(self._CHECK_PERIOD, self.check_limits)


def run_command(args):
    settings = resolve_settings(args)
    for key, value in settings["env"].items():
        os.environ[key] = value
    from .. import cluster
    cluster.scheduling_policy = settings["sched"]
    check_importable(settings["target"], settings["app_dir"])
    preloaded = None
    if settings["preload"]:
        preloaded = load_target(settings["target"], settings["interface"], settings["app_dir"])
        gc.collect()
        # Import the server module too, so its pages are shared like the app's.
        importlib.import_module("pyclusterc.serve.asgi" if preloaded[1] == "asgi" else "pyclusterc.serve.wsgi")
        # And the idna codec: werkzeug's first request (and getaddrinfo on a name) would
        # import it in every worker, ~0.8 MiB of private pages each.
        importlib.import_module("encodings.idna")
        gc.freeze()  # keep the imported objects' pages shared after fork
        settings["interface"] = preloaded[1]
    explicit = args.bind is not None or "bind" in settings_file.load_file(".")[0]
    binds = parse_binds(settings["bind"], settings["sched"], explicit)
    if settings["interface"] == "script" and not explicit:
        binds = [b for b in binds if b[0] == "socket"]  # the script listens where it wants
    try:
        settings["addresses"] = bind_all(binds)
    except OSError as e:
        raise UsageError(str(e)) from None
    return Primary(settings, preloaded).start()


def control_command(args):
    """status | reload | restart | scale N | stop | monit | metrics [NAME]."""
    from ..manager import control
    name = control.check_name(args.name)
    if args.command == "monit":
        try:
            control.monit(name, args.interval, args.once)
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "status":
        print(control.format_status(control.request(name, "status", timeout=10.0)))
    elif args.command == "metrics":
        sys.stdout.write(control.format_metrics(control.request(name, "metrics", timeout=10.0)))
    else:
        fields = {"count": args.count} if args.command == "scale" else {}
        # These answer when done: every worker replaced, or the primary gone.
        reply = control.request(name, args.command, timeout=600.0, **fields)
        print(f"pyclusterc: {name}: {reply.get('message', 'done')}")
    return 0


def main(argv=None):
    from .. import cluster
    if cluster.is_worker and _ENV_SETTINGS in os.environ:
        # A spawned worker re-runs this command line: serve instead of parsing it.
        worker_main(json.loads(os.environ.pop(_ENV_SETTINGS)))
        return 0
    parser = build_parser()
    from ..manager.control import ControlError
    try:
        args = parser.parse_args(argv)
        if args.command == "run":
            return run_command(args)
        return control_command(args)
    except ControlError as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, ValueError) as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 2
    except AppError as e:
        if e.details:
            sys.stderr.write(e.details)
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
