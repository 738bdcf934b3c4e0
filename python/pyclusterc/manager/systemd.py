"""``pyclusterc startup systemd [--user]``: unit files that run the saved apps under systemd,
the real supervisor, in the foreground (``pyclusterc run ...``, no keeper, no log files:
the journal takes stdout and stderr).

    systemd ──fork/exec──► python -m pyclusterc run TARGET --name NAME ...   (MAINPID)
       ▲  ▲                   │  sd_notify: READY=1, RELOADING=1, STOPPING=1, STATUS=, WATCHDOG=1
       │  └── $NOTIFY_SOCKET ◄┘  (manager/sdnotify.py; Type=notify, NotifyAccess=main)
       └── systemctl reload  ──► ExecReload=/bin/kill -HUP $MAINPID   (rolling reload)
           systemctl stop    ──► SIGTERM to the primary only (KillMode=mixed): it drains its
                                 workers; whatever is left at TimeoutStopSec gets SIGKILL

What the caller (the CLI) must do: ``render_unit(spec, user=...)`` for each saved spec
(``manager.apps.saved_specs``), ``write_units(specs, directory, ...)`` to write them
(``default_unit_dir(user)`` unless the user gave ``--dir``), print the paths and
``enable_commands(names, user)``. ``Type=notify`` needs the primary to send READY=1
(ProcessManager + ``Notifier``), else systemd times the start out.
"""
import os
import sys

__all__ = ["SystemdError", "unit_name", "render_unit", "write_units", "default_unit_dir",
           "enable_commands", "exec_quote"]


class SystemdError(Exception):
    """A unit that cannot be written: one line."""


def unit_name(name):
    return f"pyclusterc-{name}.service"


def default_unit_dir(user):
    if user:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return os.path.join(config, "systemd", "user")
    return "/etc/systemd/system"


def exec_quote(arg):
    """One ExecStart= word: systemd's C-style double quotes; ``$`` and ``%`` doubled so
    neither environment nor specifier expansion touches it (systemd.service(5), "Command lines")."""
    text = str(arg).replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\n\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _env_quote(key, value):
    text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_unit(spec, *, user=False, python=None, watchdog_sec=None, restart="on-failure",
                run_as=None, stop_timeout=None):
    """The text of ``pyclusterc-NAME.service`` for an app spec (see manager.apps)."""
    python = os.path.abspath(python or sys.executable)
    name = spec["name"]
    argv = [python, "-m", "pyclusterc", "run", *spec["argv"]]
    target = spec["argv"][0]
    lines = [
        "# Written by `pyclusterc startup systemd`; edit freely, or write it again.",
        "[Unit]",
        f"Description=pyclusterc app {name} ({target})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"WorkingDirectory={exec_quote(spec['cwd'])}",
    ]
    lines += [f"Environment={_env_quote(k, v)}" for k, v in sorted(spec.get("env", {}).items())]
    lines += [
        "ExecStart=" + " ".join(exec_quote(a) for a in argv),
        "ExecReload=/bin/kill -HUP $MAINPID",
        # TERM to the primary alone: it drains and stops its workers itself; what is left
        # when TimeoutStopSec runs out is killed, workers included.
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"Restart={restart}",
        "RestartSec=1",
    ]
    if stop_timeout:
        lines.append(f"TimeoutStopSec={stop_timeout:g}")
    if watchdog_sec:
        lines.append(f"WatchdogSec={watchdog_sec:g}")
    if run_as and not user:
        lines.append(f"User={run_as}")
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}", ""]
    return "\n".join(lines)


def write_units(specs, directory, **options):
    """Write one unit per spec into ``directory``; returns the paths written."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise SystemdError(f"cannot create {directory}: {e.strerror}") from None
    paths = []
    for spec in specs:
        path = os.path.join(directory, unit_name(spec["name"]))
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(render_unit(spec, **options))
            os.replace(tmp, path)
        except OSError as e:
            hint = "; run as root or use --user" if e.errno in (1, 13) and not options.get("user") else ""
            raise SystemdError(f"cannot write {path}: {e.strerror}{hint}") from None
        paths.append(path)
    return paths


def enable_commands(names, user):
    ctl = "systemctl --user" if user else "systemctl"
    units = " ".join(unit_name(n) for n in names)
    commands = [f"{ctl} daemon-reload", f"{ctl} enable --now {units}"]
    if user:
        # Without lingering, user units stop at logout and do not start at boot.
        commands.append("loginctl enable-linger $USER")
    return commands
