"""Settings for ``pyclusterc run``: defaults, [tool.pyclusterc] in pyproject.toml or a
pyclusterc.toml, and the usable CPU count (affinity and cgroup quota)."""
import os

from .._lowlevel.cpus import usable_cpus

DEFAULTS = {
    "instances": "max",
    "bind": ["127.0.0.1:8000"],
    "interface": "auto",
    "sched": "rr",
    "threads": None,         # WSGI: chosen per worker when unset
    "preload": False,
    "name": None,
    "env": [],
    "log_level": "info",
    "access_log": False,
    "kill_timeout": 1.6,     # PM2's default, in seconds
    "keep_alive": 5.0,       # idle keep-alive connections close after this (uvicorn's default)
    "app_dir": None,
    "forwarded_allow_ips": None,  # ASGI: uvicorn's default ($FORWARDED_ALLOW_IPS or 127.0.0.1)
    # Process management, PM2's names and defaults (durations in seconds).
    "listen_timeout": 3.0,
    "wait_ready": False,
    "max_restarts": 16,
    "min_uptime": 1.0,
    "exp_backoff_restart_delay": None,
    "max_memory_restart": None,  # bytes
    "max_requests": 0,
    "timeout": 30.0,             # gunicorn's default for a worker that stopped making progress
}

# Keys accepted in a config file (dashes or underscores) and the type each must have.
_FILE_TYPES = {
    "app": str, "instances": (int, str), "bind": (str, list), "interface": str,
    "sched": str, "threads": int, "preload": bool, "name": str, "env": (list, dict),
    "log_level": str, "access_log": bool, "kill_timeout": (int, float), "keep_alive": (int, float),
    "app_dir": str, "forwarded_allow_ips": str,
    "listen_timeout": (int, float), "wait_ready": bool, "max_restarts": int,
    "min_uptime": (int, float), "exp_backoff_restart_delay": (int, float),
    "max_memory_restart": (int, str), "max_requests": int, "timeout": (int, float),
}


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the setting and what is accepted."""


def load_file(directory="."):
    """Settings from ./pyclusterc.toml, else [tool.pyclusterc] in ./pyproject.toml.

    Returns (settings, source path or None)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return {}, None
    for name, table in (("pyclusterc.toml", None), ("pyproject.toml", ("tool", "pyclusterc"))):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        for key in table or ():
            data = data.get(key, {})
        if not data:
            continue
        return _check_file_settings(data, path), path
    return {}, None


def _check_file_settings(data, path):
    settings = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        expected = _FILE_TYPES.get(key)
        if expected is None:
            raise ConfigError(f"{path}: unknown setting {raw_key!r}; accepted: "
                              f"{', '.join(sorted(k.replace('_', '-') for k in _FILE_TYPES))}")
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise ConfigError(f"{path}: setting {raw_key!r} has the wrong type ({type(value).__name__})")
        if key == "bind" and isinstance(value, str):
            value = [value]
        if key == "env" and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]
        settings[key] = value
    return settings


def resolve_instances(value, cpus=None):
    """N | "max" | -N (max minus N) -> a worker count >= 1; ConfigError otherwise."""
    text = str(value).strip()
    cpus = usable_cpus() if cpus is None else cpus
    if text == "max" or text == "0":
        return cpus
    try:
        number = int(text)
    except ValueError:
        raise ConfigError(f"invalid instance count {value!r}: use a positive number, 'max' "
                          "or -N (all usable CPUs but N)") from None
    if number < 0:
        return max(1, cpus + number)
    if number > 1024:
        raise ConfigError(f"invalid instance count {value!r}: at most 1024 workers")
    return number
