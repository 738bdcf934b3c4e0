"""``pyclusterc run TARGET``: serve an ASGI or WSGI app, or a script, on every core.

The primary binds the addresses, forks the workers and restarts the ones that crash;
each worker loads the app and serves the connections the primary hands it. A worker
that cannot load the app exits with APP_LOAD_ERROR after telling the primary why, and
the primary prints that once and stops instead of respawning in a loop.
"""
import argparse
import gc
import importlib
import importlib.util
import inspect
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

from . import config as settings_file
from .config import ConfigError

# Exit status of a worker that could not load the app or listen (gunicorn's APP_LOAD_ERROR).
APP_LOAD_ERROR = 4

_ENV_SETTINGS = "PYCLUSTERC_RUN_SETTINGS"
_INTERFACES = ("auto", "asgi", "wsgi", "script")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# Too many crashes in this window (seconds) per worker slot: stop instead of respawning.
_CRASH_WINDOW, _CRASHES_PER_WORKER = 10.0, 5


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
    from . import __version__
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
                     help="WSGI threads per worker (default 8)")
    run.add_argument("--preload", action="store_true", default=None,
                     help="import the app in the primary, gc.freeze(), then fork the workers")
    run.add_argument("--name", help="a name for this cluster (used by the control commands)")
    run.add_argument("--env", action="append", metavar="K=V", help="set an environment variable; repeatable")
    run.add_argument("--log-level", choices=_LOG_LEVELS, help="default info")
    run.add_argument("--access-log", action="store_true", default=None, help="log every request")
    run.add_argument("--kill-timeout", type=_seconds, metavar="SECONDS",
                     help="on stop, how long in-flight requests may take before workers are "
                          "killed (default 1.6, PM2's; '1600ms' also works)")
    return parser


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
    if merged["threads"] is not None and merged["interface"] in ("asgi", "script"):
        raise UsageError(f"conflicting options: --threads is for WSGI apps, not --interface {merged['interface']}")
    return merged


# ---- addresses -------------------------------------------------------------------

def parse_binds(binds, sched, explicit):
    """(kind, value) per bind: ("address", (family, sockaddr)) or ("socket", sock)."""
    from .cluster import parse_address
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
    from .cluster import format_address
    return format_address(sockaddr) if family == socket.AF_UNIX else "http://" + format_address(sockaddr)


def bind_all(binds):
    """Create the listening sockets in the primary (so 'address in use' is caught here,
    once) and register them with the cluster. Returns the worker-side address strings."""
    from . import cluster
    from .cluster import format_address
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
    """Register an inherited listening socket (fd://, systemd) as a cluster server.

    cluster.py has no public call for this yet; this mirrors _Primary.server_for."""
    from . import cluster
    from ._core import lib
    state = cluster._state
    family = sock.family
    name = sock.getsockname()
    sockaddr = name if family == socket.AF_UNIX else tuple(name[:2])
    server = cluster._Server(state.next_listener, sock, sockaddr)
    state.next_listener += 1
    state.servers[(family, sockaddr)] = server
    if state.policy in cluster._PRIMARY_ACCEPTS:
        cluster.check_rc(lib.pc_dispatch_add_listener(state.ensure_dispatch(), server.id, sock.fileno()),
                         f"listener {cluster.format_address(sockaddr)}")
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
    from . import cluster
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
    from . import cluster
    try:
        cluster.worker.send({"pyclusterc": "app_error", "message": message, "details": details})
    except Exception:  # noqa: BLE001 - already disconnected: the primary is stopping on
        pass           # another worker's report of the same error; say it once, not twice
    sys.stdout.flush()
    raise SystemExit(APP_LOAD_ERROR)


def worker_main(settings, app=None, interface=None):
    """Load (unless preloaded), listen on every bind, serve until told to stop."""
    from . import cluster
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the stop hooks are in place
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
    options = {"log_level": settings["log_level"], "access_log": settings["access_log"],
               "kill_timeout": settings["kill_timeout"], "threads": settings["threads"],
               "slot": slot}
    if interface == "asgi":
        from . import serve_asgi
        code = serve_asgi.run(app, listeners, options, on_stop)
        if code == serve_asgi.LIFESPAN_FAILED:
            _fail("the app's lifespan startup failed (see its error above)")
    else:
        from . import serve_wsgi
        code = serve_wsgi.run(app, listeners, options, on_stop)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # daemon threads (channel reader, pools) must not delay the exit


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


class Primary:
    def __init__(self, settings, preloaded=None):
        from . import cluster
        self.cluster = cluster
        self.settings = settings
        self.preloaded = preloaded
        self.relay = OutputRelay()
        self.stopping = False
        self.app_error = None
        self.crashes = []
        self.ready = set()

    def start(self):
        cluster = self.cluster
        cluster.on("message", self.on_message)
        cluster.on("exit", self.on_exit)
        cluster.on("listening", self.on_listening)
        env = {_ENV_SETTINGS: json.dumps(self.settings)}
        self.fork_env = env
        if self.preloaded is not None:
            app, interface = self.preloaded
            cluster.setup_primary(fork=True, target=lambda: worker_main(self.settings, app, interface))
        self.watch_signals()
        for _ in range(self.settings["instances"]):
            self.fork()
        s = self.settings
        print(f"pyclusterc: {s['instances']} worker{'s' if s['instances'] != 1 else ''} "
              f"({s['interface']}, sched {s['sched']}) for {s['target']}"
              + (f" [{s['name']}]" if s["name"] else ""), flush=True)
        cluster.run()
        self.relay.drain()
        if self.app_error is not None:
            message, details = self.app_error
            if details:
                sys.stderr.write(details if details.endswith("\n") else details + "\n")
            print(f"pyclusterc: error: {message}", file=sys.stderr, flush=True)
            return 1
        if self.crashes and not self.stopping:
            return 1
        print("pyclusterc: stopped", flush=True)
        return 0

    def fork(self):
        return self.relay.fork(lambda: self.cluster.fork(self.fork_env))

    def watch_signals(self):
        """TERM/INT are acted on in the cluster loop, not inside the handler (which may
        interrupt the main thread while it holds a channel's send lock): the handler only
        records, and the wakeup fd makes the loop call back. cluster.py has no public
        hook for an extra fd, hence _state.watch."""
        state = self.cluster._state
        if not hasattr(state, "watch"):
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self.on_stop_signal)
            return
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        received = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: received.append(signum))
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

        def on_wakeup():
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            while received:
                self.on_stop_signal(received.pop(0), None)
        state.watch(wake_r, on_wakeup)

    def on_stop_signal(self, signum, frame):
        if self.stopping:  # a second TERM/INT: do not wait any longer
            for worker in self.cluster.workers.values():
                worker.kill("SIGKILL")
            return
        self.stopping = True
        self.cluster.shutdown(timeout=self.settings["kill_timeout"])

    def on_message(self, worker, message):
        if isinstance(message, dict) and message.get("pyclusterc") == "app_error":
            self.stop_with_error(message.get("message", "the app failed to load"), message.get("details"))

    def stop_with_error(self, message, details=None):
        if self.app_error is None:
            self.app_error = (message, details)
        if not self.stopping:
            self.stopping = True
            self.cluster.shutdown(timeout=self.settings["kill_timeout"])

    def on_listening(self, worker, address):
        self.ready.add(worker.id)
        if len(self.ready) == self.settings["instances"]:
            print(f"pyclusterc: ready, {len(self.ready)} workers listening", flush=True)

    def on_exit(self, worker, code, signal_name):
        self.ready.discard(worker.id)
        if self.stopping or worker.exited_after_disconnect:
            return
        if code == APP_LOAD_ERROR:
            self.stop_with_error(f"worker {worker.id} could not load the app (exit status {code})")
            return
        how = f"signal {signal_name}" if signal_name else f"exit status {code}"
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < _CRASH_WINDOW] + [now]
        if len(self.crashes) > _CRASHES_PER_WORKER * self.settings["instances"]:
            self.stop_with_error(f"workers keep crashing ({len(self.crashes)} in {_CRASH_WINDOW:.0f} s, "
                                 f"last: worker {worker.id}, {how}); stopping")
            return
        print(f"pyclusterc: worker {worker.id} died ({how}); starting a new one", flush=True)
        self.fork()


def run_command(args):
    settings = resolve_settings(args)
    for key, value in settings["env"].items():
        os.environ[key] = value
    from . import cluster
    cluster.scheduling_policy = settings["sched"]
    check_importable(settings["target"], settings["app_dir"])
    preloaded = None
    if settings["preload"]:
        preloaded = load_target(settings["target"], settings["interface"], settings["app_dir"])
        if settings["threads"] is not None and preloaded[1] == "asgi":
            raise UsageError("conflicting options: --threads is for WSGI apps; this app is ASGI")
        gc.collect()
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


def main(argv=None):
    from . import cluster
    if cluster.is_worker and _ENV_SETTINGS in os.environ:
        # A spawned worker re-runs this command line: serve instead of parsing it.
        worker_main(json.loads(os.environ.pop(_ENV_SETTINGS)))
        return 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return run_command(args)
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
