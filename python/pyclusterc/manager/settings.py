"""Settings for ``pyclusterc run``: every option declared once, and ``RunSettings``.

    flags (argparse, built from OPTIONS) ─┐
    [tool.pyclusterc] / pyclusterc.toml ──┼─► resolve() ─► RunSettings (frozen) ─► ProcessManager
    defaults (Option.default) ────────────┘      checks, instances, names

Flags win over the file, the file over defaults. Values in files parse like flags
("3s", "1600ms", "300M"). The serving options come from ``serve.options``.
"""
import dataclasses
import hashlib
import os
import re

from .._lowlevel.cpus import usable_cpus
from .._lowlevel.options import (Option, OptionError, choice, count, seconds, size, text)
from ..cluster import SCHEDULING_POLICIES
from ..serve.options import OPTIONS as SERVE_OPTIONS
from .logs import OPTIONS as LOG_OPTIONS
from .metrics import OPTIONS as METRICS_OPTIONS

__all__ = ["OPTIONS", "RunSettings", "ConfigError", "resolve", "load_file", "resolve_instances",
           "default_name", "INTERFACES"]

INTERFACES = ("auto", "asgi", "wsgi", "script")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(OptionError):
    """A bad setting; the message is one line naming the setting and what is accepted."""


def instances(value):
    """N | "max" | -N (max minus N), checked now, resolved against the CPUs later."""
    value_text = str(value).strip()
    if value_text == "max":
        return "max"
    try:
        number = int(value_text)
    except ValueError:
        raise ValueError(f"invalid instance count {value!r}: use a positive number, 'max' or -N "
                         "(all usable CPUs but N)") from None
    if number == 0:
        raise ValueError("invalid instance count 0: 0 workers cannot serve; use a positive number, "
                         "'max' or -N")
    if number > 1024:
        raise ValueError(f"invalid instance count {value!r}: at most 1024 workers")
    return number


def env_pair(value):
    key, sep, val = value.partition("=")
    if not sep or not key or "\0" in value:
        raise ValueError(f"invalid --env {value!r}: use KEY=VALUE")
    return value


def cluster_name(value):
    if not _NAME.fullmatch(value):
        raise ValueError("use 1 to 64 letters, digits, '.', '_' or '-'")
    return value


_PM = "process management (PM2's names; durations in seconds or '500ms')"

OPTIONS = (
    Option("app_dir", None, "put DIR first on sys.path (default: .)", parse=text, metavar="DIR"),
    Option("instances", "max", "worker count: N, max (usable CPUs: affinity and cgroup quota), "
           "or -N (max minus N); default max", parse=instances, flags=("-i", "--instances"),
           metavar="N|max|-N", file_types=(int,)),
    Option("bind", (), "HOST:PORT, [::1]:PORT, unix:PATH or fd://N; repeatable; "
           "default 127.0.0.1:8000 (systemd LISTEN_FDS are used when present)", parse=text,
           flags=("-b", "--bind"), metavar="ADDRESS", repeat=True, file_types=(list,)),
    Option("interface", "auto", "default auto: detect ASGI/WSGI", parse=choice(*INTERFACES),
           metavar="|".join(INTERFACES)),
    Option("sched", "rr", "how connections reach workers; default rr (round-robin by the primary)",
           parse=choice(*SCHEDULING_POLICIES), metavar="|".join(SCHEDULING_POLICIES)),
    Option("preload", False, "import the app once in the primary (then gc.freeze()) before forking "
           "the workers; without it each worker imports the app after the fork"),
    Option("name", None, "a name for this cluster, for the control commands (default: from the "
           "target and the directory)", parse=cluster_name),
    Option("env", (), "set an environment variable in the workers; repeatable", parse=env_pair,
           metavar="K=V", repeat=True, file_types=(list,)),
    Option("kill_timeout", 1.6, "on stop, how long in-flight requests may take before workers are "
           "killed (default 1.6, PM2's; '1600ms' also works)", parse=seconds, metavar="SECONDS",
           file_types=(int, float)),
    *SERVE_OPTIONS,
    Option("listen_timeout", 30.0, "how long a new worker may take to become ready (its app started, "
           "or pyclusterc.ready() with --wait-ready); on reload, a worker not ready by then aborts "
           "the reload and the old ones keep serving (default 30: PM2's 3 s moves on without "
           "readiness, this rolls back, so it waits for slow starts)", parse=seconds, metavar="SECONDS", group=_PM, file_types=(int, float)),
    Option("wait_ready", False, "a worker is ready when it calls pyclusterc.ready() (after its app "
           "started), not when its app started", group=_PM),
    Option("max_restarts", 16, "stop after N crashes in a row, each before --min-uptime (default 16)",
           parse=count, metavar="N", group=_PM, file_types=(int,)),
    Option("min_uptime", 1.0, "a worker that dies sooner counts as unstable (default 1)",
           parse=seconds, metavar="SECONDS", group=_PM, file_types=(int, float)),
    Option("exp_backoff_restart_delay", None, "wait this long before restarting a crashed worker, "
           "x1.5 per crash in a row up to 15 s, reset after 30 s up (default: restart at once)",
           parse=seconds, metavar="SECONDS", group=_PM, file_types=(int, float)),
    Option("max_memory_restart", None, "replace a worker (gracefully) whose RSS passes SIZE, e.g. "
           "300M or 1G", parse=size, metavar="SIZE", group=_PM, file_types=(int,)),
    Option("max_requests", 0, "replace a worker (gracefully) after about N requests (default 0: never)",
           parse=count, metavar="N", group=_PM, file_types=(int,)),
    Option("timeout", 30.0, "kill and replace a worker whose loop made no progress for this long "
           "(default 30; 0 turns it off)", parse=seconds, metavar="SECONDS", group=_PM,
           file_types=(int, float)),
    *LOG_OPTIONS,
    *METRICS_OPTIONS,
)

_BY_NAME = {option.name: option for option in OPTIONS}


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """What resolve() works out beyond the options themselves."""

    target: str = ""
    addresses: tuple = ()    # worker-side addresses, once bound ("127.0.0.1:8000", "unix:/p")
    config_file: str = ""    # where file settings came from, if anywhere


RunSettings = dataclasses.make_dataclass(
    "RunSettings",
    [(field.name, object, dataclasses.field(default=getattr(_Resolved, field.name)))
     for field in dataclasses.fields(_Resolved)]
    + [(option.name, object, dataclasses.field(default=option.default)) for option in OPTIONS],
    frozen=True)
RunSettings.__module__ = __name__
RunSettings.__doc__ = ("Every setting of one cluster, resolved and checked (frozen: a change makes "
                       "a new value with dataclasses.replace). Attributes: target, addresses, "
                       "config_file, and one per option in OPTIONS.")


# ---- the settings file -------------------------------------------------------------------

def load_file(directory=".", path=None):
    """Settings from FILE (--config), else ./pyclusterc.toml, else [tool.pyclusterc] in
    ./pyproject.toml: ({name: value}, the path or None). Keys take dashes or underscores;
    [[apps]] tables (background apps) are not run settings and are skipped here."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    candidates = ([(path, None)] if path is not None else
                  [(os.path.join(directory, "pyclusterc.toml"), None),
                   (os.path.join(directory, "pyproject.toml"), ("tool", "pyclusterc"))])
    for candidate, table in candidates:
        if path is None and not os.path.isfile(candidate):
            continue
        try:
            with open(candidate, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read {candidate}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"cannot read {candidate}: {e}") from None
        if table is None and candidate.endswith("pyproject.toml"):
            table = ("tool", "pyclusterc")
        for key in table or ():
            data = data.get(key, {})
        data = {k: v for k, v in data.items() if k != "apps"}
        if not data and path is None:
            continue
        return file_settings(data, candidate), candidate
    return {}, None


def file_settings(data, where):
    """Check a table of settings (from a file) against OPTIONS: {name: converted value}."""
    settings = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key == "app":
            key = "target"
        if key == "target":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: setting 'app' must be a string like 'module:app'")
            settings[key] = value
            continue
        option = _BY_NAME.get(key)
        if option is None:
            accepted = ", ".join(sorted(["app", *(o.name.replace("_", "-") for o in OPTIONS)]))
            raise ConfigError(f"{where}: unknown setting {raw_key!r}; accepted: {accepted}")
        if key == "env" and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]
        if option.repeat and isinstance(value, str):
            value = [value]
        try:
            settings[key] = option.convert(value, where=f"{where}: setting")
        except OptionError as e:
            raise ConfigError(str(e)) from None
    return settings


# ---- resolving -------------------------------------------------------------------------

def resolve_instances(value, cpus=None):
    """N | "max" | -N -> a worker count >= 1."""
    cpus = usable_cpus() if cpus is None else cpus
    if value == "max":
        return cpus
    try:
        number = instances(value) if not isinstance(value, int) else value
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if number == 0:
        raise ConfigError("invalid instances 0: 0 workers cannot serve; use a positive number, "
                          "'max' or -N")
    return max(1, cpus + number) if number < 0 else number


def default_name(target, directory):
    """A name from the app target and the directory it runs in: two projects' unnamed
    clusters do not share one (as they shared "default")."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", target.replace(":", ".")).strip("-.")[:40] or "app"
    digest = hashlib.blake2s(os.path.abspath(directory).encode(), digest_size=3).hexdigest()
    return f"{stem}-{digest}"


def resolve(flags, directory=".", config_path=None):
    """flags: {name: value} given on the command line (None = not given). Returns
    RunSettings with defaults < file < flags, every value checked."""
    from_file, source = load_file(directory, config_path)
    merged = {option.name: option.default for option in OPTIONS}
    merged["target"] = None
    merged.update(from_file)
    merged.update({key: value for key, value in flags.items() if value is not None})
    target = merged["target"]
    if not target:
        raise ConfigError("missing TARGET: give module:attr, a module, or path/to/script.py")
    script = target.endswith(".py") and ":" not in target
    if merged["interface"] == "auto" and script:
        merged["interface"] = "script"
    if merged["interface"] == "script" and not script:
        raise ConfigError(f"conflicting options: --interface script needs a path/to/script.py, got {target!r}")
    if merged["interface"] == "script" and merged["preload"]:
        raise ConfigError("conflicting options: --preload imports an app; a script runs in each worker")
    if merged["threads"] is not None and merged["interface"] == "script":
        raise ConfigError("conflicting options: --threads is for WSGI and ASGI apps; a script runs its own")
    merged["instances"] = resolve_instances(merged["instances"])
    if merged["name"] is None:
        merged["name"] = default_name(target, os.path.join(directory, merged["app_dir"] or "."))
    merged["config_file"] = source or ""
    return RunSettings(**merged)


def env_dict(settings):
    return dict(item.split("=", 1) for item in settings.env)
