"""Background apps (PM2's ``start``/``list``/``stop``/``save``/``resurrect``): one detached
``pyclusterc run`` per app, recorded under a state directory.

    pyclusterc start app:app ──► launch() ── Popen(new session, stdin /dev/null,
                                    │          stdout ► logs/NAME-out.log, stderr ► logs/NAME-error.log)
                                    │              ▼
                                    │   keeper  (python -I manager/apps.py keep NAME)
                                    │     │ forwards TERM/INT/HUP/USR1; waits; writes run/NAME.json
                                    │     ▼
                                    │   pyclusterc run TARGET --name NAME [flags]   ──► workers
                                    │     └─ control socket $XDG_RUNTIME_DIR/pyclusterc/NAME.sock
                                    ▼
                 wait_ready(): the "pyclusterc: ready" line in the out log, or the
                 keeper's exit record (the app's own error, from the error log)

State directory (``state_dir()``: ``$PYCLUSTERC_HOME``, else ``$XDG_STATE_HOME/pyclusterc``,
else ``~/.pyclusterc``), files written atomically (temp file + rename):

    apps/NAME.json   the app: run's argv, cwd, env, wanted state — written by the CLI only
    run/NAME.json    keeper pid, primary pid and start time, exit record — by the keeper only
    logs/NAME-out.log, logs/NAME-error.log          the app's output (kept by ``delete``)
    dump.json        ``save``: the specs of the apps online then; ``resurrect`` reads it

The keeper exists so that a primary's end is never silent: it records the exit status
(or the signal) the moment the primary dies, and ``list`` shows ``errored`` with it. A
keeper and primary killed together (``kill -9`` of the group) leave no exit record;
``list`` then sees the recorded pids gone and shows ``errored`` too.

What the caller (the CLI) must do: build specs with ``spec_for(target, run_args, ...)`` or
``read_ecosystem(path, run_flags)`` — checking each spec's ``argv`` with ``run``'s parser
first (this module does not import the CLI) — then ``start(store, specs)``; the other
verbs are ``AppStore`` methods and module functions below. ``AppsError`` is one line.
Control sockets are found through ``$XDG_RUNTIME_DIR`` as for ``run``: the CLI must see
the same value the app was started with.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time


def _control():
    # Imported on use: the keeper runs this file as a script (`python -I .../apps.py keep`),
    # with the standard library only — a ~11 MiB process per app instead of ~27 MiB with
    # the package (its native core) and prometheus_client loaded.
    from . import control
    return control

__all__ = ["AppsError", "AppStore", "state_dir", "spec_for", "read_ecosystem", "start",
           "inspect", "list_apps", "stop", "restart", "reload", "delete", "save", "resurrect",
           "tail_lines", "follow", "READY_TEXT"]

READY_TEXT = "pyclusterc: ready,"   # the primary's readiness line (cli prints it)
_ERROR_TEXT = "pyclusterc: error:"
_CAPTURED_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV")


class AppsError(Exception):
    """Bad input or an app that failed: printed as one line."""


def state_dir():
    if os.environ.get("PYCLUSTERC_HOME"):
        return os.environ["PYCLUSTERC_HOME"]
    if os.environ.get("XDG_STATE_HOME"):
        return os.path.join(os.environ["XDG_STATE_HOME"], "pyclusterc")
    return os.path.join(os.path.expanduser("~"), ".pyclusterc")


def _write_json(path, value):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AppsError(f"cannot read {path}: {e}") from None


class AppStore:
    """The state directory: app specs, run records, logs, the saved list."""

    def __init__(self, root=None):
        self.root = os.path.abspath(root or state_dir())
        for sub in ("apps", "run", "logs"):
            try:
                os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
            except OSError as e:
                raise AppsError(f"cannot create the state directory {self.root}: {e.strerror}") from None
        self.dump_path = os.path.join(self.root, "dump.json")

    def spec(self, name):
        return _read_json(os.path.join(self.root, "apps", name + ".json"))

    def put_spec(self, spec):
        _write_json(os.path.join(self.root, "apps", spec["name"] + ".json"), spec)

    def run_record(self, name):
        return _read_json(os.path.join(self.root, "run", name + ".json")) or {}

    def put_run_record(self, name, record):
        _write_json(os.path.join(self.root, "run", name + ".json"), record)

    def names(self):
        return sorted(f[:-5] for f in os.listdir(os.path.join(self.root, "apps")) if f.endswith(".json"))

    def remove(self, name):
        for sub in ("apps", "run"):
            try:
                os.unlink(os.path.join(self.root, sub, name + ".json"))
            except FileNotFoundError:
                pass

    def log_paths(self, name):
        logs = os.path.join(self.root, "logs")
        return os.path.join(logs, f"{name}-out.log"), os.path.join(logs, f"{name}-error.log")

    def resolve(self, name):
        """[name] or every app for "all"; AppsError naming the known apps otherwise."""
        names = self.names()
        if name == "all":
            return names
        if name not in names:
            known = ", ".join(names) or "none"
            raise AppsError(f"no app named {name!r} (apps: {known}); start one with `pyclusterc start`")
        return [name]


# ---- specs -----------------------------------------------------------------------------

def default_name(target):
    """hello_wsgi:app -> hello_wsgi; path/server.py -> server; sanitised for --name."""
    base = target.partition(":")[0]
    base = os.path.basename(base[:-3] if base.endswith(".py") else base).replace("/", ".")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", base).strip(".")[:64] or "app"


def spec_for(target, run_args=(), name=None, cwd=None, env=None):
    """An app spec: ``argv`` is what follows ``pyclusterc run`` (``--name NAME`` included)."""
    run_args = list(run_args)
    if "--name" in run_args[:-1]:
        given = run_args[run_args.index("--name") + 1]
        if name is not None and given != name:
            raise AppsError(f"conflicting names for {target!r}: {name!r} and --name {given!r}")
        name = given
    else:
        name = name or default_name(target)
        run_args += ["--name", name]
    try:
        _control().check_name(name)
    except _control().ControlError as e:
        raise AppsError(str(e)) from None
    # The variables that decide which Python and which code run, as they were at `start`:
    # `resurrect` from another shell and systemd units (which get no shell environment)
    # must run the same thing.
    captured = {k: os.environ[k] for k in _CAPTURED_ENV if k in os.environ}
    return {"name": name, "argv": [target, *run_args], "cwd": os.path.abspath(cwd or "."),
            "env": {**captured, **{str(k): _env_value(v) for k, v in (env or {}).items()}}}


def _env_value(value):
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def read_ecosystem(path, run_flags):
    """Specs from ``[[apps]]`` (pyclusterc.toml) or ``[[tool.pyclusterc.apps]]``
    (pyproject.toml). ``run_flags``: the option strings ``run`` accepts, to turn each
    setting into its flag (``instances = 2`` -> ``--instances 2``)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise AppsError(f"no such file {path!r}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise AppsError(f"cannot read {path}: {e}") from None
    where = "[[tool.pyclusterc.apps]]" if os.path.basename(path) == "pyproject.toml" else "[[apps]]"
    tables = (data.get("tool", {}).get("pyclusterc", {}) if where.startswith("[[tool") else data).get("apps")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise AppsError(f"{path}: no {where} tables; each app is one, with `app` (its TARGET) and "
                        "run's settings, plus optional name, cwd and env")
    base = os.path.dirname(os.path.abspath(path))
    specs = []
    for index, table in enumerate(tables):
        table = dict(table)
        label = f"{path}: app {table.get('name', index + 1)!r}"
        target = table.pop("app", None) or table.pop("target", None)
        if not isinstance(target, str) or not target:
            raise AppsError(f"{label}: missing `app` (module:attr, a module or path/to/script.py)")
        name = table.pop("name", None)
        cwd = os.path.join(base, str(table.pop("cwd", ".")))
        env = table.pop("env", {})
        if not isinstance(env, dict):
            raise AppsError(f"{label}: `env` must be a table of NAME = \"value\"")
        args = []
        for key, value in table.items():
            flag = "--" + key.replace("_", "-")
            if flag not in run_flags:
                accepted = sorted(f[2:] for f in run_flags if f.startswith("--") and not f.startswith("--no-"))
                raise AppsError(f"{label}: unknown setting {key!r}; accepted: name, app, cwd, env, "
                                + ", ".join(accepted))
            if value is True:
                args.append(flag)
            elif value is False:
                if "--no-" + flag[2:] in run_flags:
                    args.append("--no-" + flag[2:])
            else:
                for item in value if isinstance(value, list) else [value]:
                    args += [flag, str(item)]
        try:
            specs.append(spec_for(target, args, name=name, cwd=cwd, env=env))
        except AppsError as e:
            raise AppsError(f"{label}: {e}") from None
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise AppsError(f"{path}: two apps share a name; give each a distinct `name`")
    return specs


# ---- starting ----------------------------------------------------------------------------

def _start_time(pid):
    """The process start time (clock ticks since boot) — tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, start_time):
    return bool(pid) and start_time is not None and _start_time(pid) == start_time


def launch(store, spec, log_flags=()):
    """Start the keeper for ``spec`` in a new session; returns a handle for wait_ready()."""
    name = spec["name"]
    out_path, err_path = store.log_paths(name)
    state = inspect(store, name) if store.spec(name) else None
    if state and state["state"] in ("online", "launching"):
        raise AppsError(f"app {name!r} is already running (pid {state['pid']}); use `pyclusterc restart {name}`")
    if not os.path.isdir(spec["cwd"]):
        raise AppsError(f"app {name!r}: no such directory {spec['cwd']!r} (its cwd)")
    spec = {**spec, "wanted": "online", "log_flags": list(log_flags)}
    store.put_spec(spec)
    store.put_run_record(name, {})
    offsets = tuple(os.path.getsize(p) if os.path.exists(p) else 0 for p in (out_path, err_path))
    env = {**os.environ, **spec["env"], "PYCLUSTERC_HOME": store.root}
    with open(out_path, "ab") as out, open(err_path, "ab") as err:
        keeper = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "keep", name],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=spec["cwd"],
                                  env=env, start_new_session=True)
    return {"name": name, "keeper": keeper, "offsets": offsets, "started": time.monotonic()}


def wait_ready(store, handle, timeout=60.0):
    """Until the app printed its ready line; AppsError with the app's own error if it
    exited first (its error log's new lines go to ``details``), or at the timeout."""
    name = handle["name"]
    out_path, err_path = store.log_paths(name)
    deadline = time.monotonic() + timeout
    while True:
        out_new = _read_from(out_path, handle["offsets"][0])
        if READY_TEXT in out_new:
            # The keeper outlives this process (init adopts it); tell Popen not to warn
            # that it is "still running" when the handle is collected.
            handle["keeper"].returncode = 0
            return
        record = store.run_record(name)
        if "exit" in record or handle["keeper"].poll() is not None:
            # Poll() reaped a keeper that died; give a recorded exit a moment to land.
            details = _read_from(err_path, handle["offsets"][1])
            errors = [l for l in details.splitlines() if _ERROR_TEXT in l]
            reason = errors[-1].split(_ERROR_TEXT, 1)[1].strip() if errors else _exit_text(record.get("exit"))
            error = AppsError(f"app {name!r} did not start: {reason}")
            error.details = details
            raise error
        if time.monotonic() > deadline:
            raise AppsError(f"app {name!r} not ready within {timeout:g} s; it is still starting "
                            f"(see `pyclusterc logs {name}`)")
        time.sleep(0.05)


def start(store, specs, log_flags=(), timeout=60.0):
    """Launch every spec, then wait for each; returns the names ready, raises the first
    failure (the others keep running, as PM2)."""
    handles = [launch(store, spec, log_flags) for spec in specs]
    failure = None
    for handle in handles:
        try:
            wait_ready(store, handle, timeout)
        except AppsError as e:
            failure = failure or e
    if failure:
        raise failure
    return [h["name"] for h in handles]


def _read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _exit_text(exit_record):
    if not exit_record:
        return "it exited"
    if exit_record.get("signal"):
        return f"killed by {exit_record['signal']}"
    return f"exit status {exit_record.get('code')}"


# ---- the keeper (in the app's session) -------------------------------------------------------

def keeper_main(name):
    store = AppStore()
    spec = store.spec(name)
    if spec is None:
        print(f"pyclusterc: error: no app named {name!r} in {store.root}", file=sys.stderr)
        return 2
    out_path, err_path = store.log_paths(name)
    argv = [sys.executable, "-m", "pyclusterc", "run", *spec["argv"]]
    if spec.get("log_flags"):
        argv += ["--log-file", out_path, "--error-log-file", err_path, *spec["log_flags"]]
    received = []
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    for signum in forwarded:  # recorded until the child exists, then passed on
        signal.signal(signum, lambda signum, frame: received.append(signum))
    primary = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    store.put_run_record(name, {"keeper": os.getpid(), "keeper_start": _start_time(os.getpid()),
                                "pid": primary.pid, "pid_start": _start_time(primary.pid),
                                "started": time.time()})

    def forward(signum, frame=None):
        try:
            primary.send_signal(signum)
        except ProcessLookupError:
            pass
    for signum in forwarded:
        signal.signal(signum, forward)
    for signum in received:
        forward(signum)
    status = primary.wait()
    record = store.run_record(name)
    record["exit"] = {"code": status if status >= 0 else None,
                      "signal": signal.Signals(-status).name if status < 0 else None, "at": time.time()}
    store.put_run_record(name, record)
    return 0


# ---- looking at apps -----------------------------------------------------------------------

def inspect(store, name):
    """The app's state: online | launching | stopped | errored, with pids and status."""
    spec = store.spec(name) or {}
    record = store.run_record(name)
    result = {"name": name, "state": "stopped", "pid": None, "status": None, "reason": None,
              "target": (spec.get("argv") or ["?"])[0], "cwd": spec.get("cwd")}
    if not record:
        return result
    exit_record = record.get("exit")
    primary_alive = _alive(record.get("pid"), record.get("pid_start"))
    if exit_record is None and primary_alive:
        result["pid"] = record["pid"]
        try:
            result["status"] = _control().request(name, "status", timeout=5.0)
            result["state"] = "online"
        except _control().ControlError as e:
            result["state"] = "launching"
            result["reason"] = str(e)
        return result
    if exit_record is None:
        if spec.get("wanted") == "stopped":
            return result
        result["state"] = "errored"
        result["reason"] = (f"primary pid {record.get('pid')} is gone without an exit record "
                            "(killed with its keeper?)") if record.get("pid") else "its keeper died"
        return result
    if spec.get("wanted") == "stopped" or exit_record.get("code") == 0:
        return result
    result["state"] = "errored"
    result["reason"] = _exit_text(exit_record)
    return result


def _foreground(store):
    """Clusters started with `pyclusterc run --name N` (not apps) whose control socket
    answers: listed too, so `list` shows every cluster of the user."""
    control = _control()
    apps = set(store.names())
    try:
        sockets = sorted(f[:-5] for f in os.listdir(control.socket_dir()) if f.endswith(".sock"))
    except OSError:
        return []
    found = []
    for name in sockets:
        if name in apps:
            continue
        try:
            status = control.request(name, "status", timeout=2.0)
        except control.ControlError:
            continue  # a stale socket of a primary that exited
        found.append({"name": name, "state": "online", "pid": status["pid"], "status": status,
                      "reason": None, "target": status.get("target"), "cwd": None, "app": False})
    return found


def _pids(info):
    status = info.get("status") or {}
    return [info["pid"], *(w["pid"] for w in status.get("workers", ()))] if info["pid"] else []


def list_apps(store, sample=0.3):
    """inspect() for every app, plus cpu (% of one core, all its processes), memory
    (bytes, RSS of all), workers, uptime, restarts and requests/s over ``sample`` seconds."""
    infos = [inspect(store, name) for name in store.names()] + _foreground(store)
    before = {info["name"]: (_cpu(_pids(info)), _requests(info)) for info in infos}
    t0 = time.monotonic()
    if sample and any(info["state"] == "online" for info in infos):
        time.sleep(sample)
        for info in infos:
            if info["state"] == "online":
                try:
                    info["status"] = _control().request(info["name"], "status", timeout=5.0)
                except _control().ControlError:
                    pass
    elapsed = max(time.monotonic() - t0, 1e-6)
    rows = []
    for info in infos:
        status = info.get("status") or {}
        cpu0, req0 = before[info["name"]]
        online = info["state"] == "online"
        rows.append({
            "name": info["name"], "state": info["state"], "pid": info["pid"], "reason": info["reason"],
            "app": info.get("app", True),  # False: a foreground `pyclusterc run`
            "target": info["target"], "workers": len(status.get("workers", ())) if online else 0,
            "uptime": status.get("uptime") if online else None,
            "restarts": status.get("restarts", 0) if online else None,
            "cpu": round((_cpu(_pids(info)) - cpu0) / elapsed * 100, 1) if online and sample else None,
            "memory": sum(_rss(p) or 0 for p in _pids(info)) if online else None,
            "rps": round((_requests(info) - req0) / elapsed, 1) if online and sample else None,
        })
    return rows


def _cpu(pids):
    from .metrics import process_cpu_seconds
    return sum(process_cpu_seconds(pid) or 0.0 for pid in pids)


def _rss(pid):
    from .metrics import process_rss
    return process_rss(pid)


def _requests(info):
    return sum(w.get("requests", 0) for w in (info.get("status") or {}).get("workers", ()))


# ---- acting on apps --------------------------------------------------------------------------

def stop(store, name, timeout=30.0):
    """Stop gracefully (control ``stop``, else TERM); the app stays listed as stopped."""
    spec = store.spec(name)
    store.put_spec({**spec, "wanted": "stopped"})
    info = inspect(store, name)
    if info["state"] not in ("online", "launching"):
        return f"{name}: already {info['state']}"
    record = store.run_record(name)
    try:
        _control().request(name, "stop", timeout=timeout)
    except _control().ControlError:
        try:
            os.kill(record["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while _alive(record.get("pid"), record.get("pid_start")) or \
            (_alive(record.get("keeper"), record.get("keeper_start")) and "exit" not in store.run_record(name)):
        if time.monotonic() > deadline:
            os.killpg(record["keeper"], signal.SIGKILL)
            return f"{name}: killed (no clean stop within {timeout:g} s)"
        time.sleep(0.05)
    return f"{name}: stopped"


def restart(store, name, log_flags=(), timeout=60.0):
    """Online: replace every worker at once (control ``restart``); else start it again."""
    if inspect(store, name)["state"] == "online":
        return f"{name}: " + _control().request(name, "restart", timeout=600.0).get("message", "restarted")
    start(store, [store.spec(name)], log_flags or store.spec(name).get("log_flags", ()), timeout)
    return f"{name}: started"


def reload(store, name, log_flags=(), timeout=60.0):
    """Online: rolling reload (control ``reload``); else start it again."""
    if inspect(store, name)["state"] == "online":
        return f"{name}: " + _control().request(name, "reload", timeout=600.0).get("message", "reloaded")
    start(store, [store.spec(name)], log_flags or store.spec(name).get("log_flags", ()), timeout)
    return f"{name}: started"


def delete(store, name):
    was = inspect(store, name)["state"]
    stop(store, name)
    store.remove(name)
    return f"{name}: deleted" + (" (stopped first)" if was in ("online", "launching") else "")


def save(store):
    """Record the apps online now; returns their names."""
    specs = [store.spec(name) for name in store.names() if inspect(store, name)["state"] == "online"]
    _write_json(store.dump_path, {"apps": specs, "saved": time.time()})
    return [s["name"] for s in specs]


def saved_specs(store):
    dump = _read_json(store.dump_path)
    if dump is None:
        raise AppsError(f"nothing saved yet ({store.dump_path}); run `pyclusterc save` first")
    return dump["apps"]


def resurrect(store, timeout=60.0):
    """Start the saved apps that are not running; returns the names started."""
    specs = [s for s in saved_specs(store) if inspect(store, s["name"])["state"] not in ("online", "launching")]
    started = []
    for spec in specs:
        started += start(store, [spec], spec.get("log_flags", ()), timeout)
    return started


# ---- logs ------------------------------------------------------------------------------------

def tail_lines(path, count):
    """The last ``count`` lines of a file (reads backwards in blocks)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            step = min(65536, position)
            position -= step
            f.seek(position)
            data = f.read(step) + data
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:] if count else []


def follow(paths, emit, interval=0.2, should_stop=lambda: False):
    """Call ``emit(path, line)`` for each line appended to ``paths`` from now on; a file
    moved or truncated (rotation) is read again from its start."""
    state = {}
    for path in paths:
        try:
            info = os.stat(path)
            state[path] = (info.st_ino, info.st_size, b"")
        except FileNotFoundError:
            state[path] = (None, 0, b"")
    while not should_stop():
        for path, (inode, offset, partial) in state.items():
            try:
                info = os.stat(path)
            except FileNotFoundError:
                continue
            if info.st_ino != inode or info.st_size < offset:
                inode, offset, partial = info.st_ino, 0, b""
            if info.st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
                offset += len(data)
                *lines, partial = (partial + data).split(b"\n")
                for line in lines:
                    emit(path, line.decode("utf-8", "replace"))
            state[path] = (inode, offset, partial)
        time.sleep(interval)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "keep":
        sys.exit(keeper_main(sys.argv[2]))
    print("usage: apps.py keep NAME (the keeper of a background app, started by `pyclusterc start`)",
          file=sys.stderr)
    sys.exit(2)
