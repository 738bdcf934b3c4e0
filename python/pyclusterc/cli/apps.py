"""The background-app commands (PM2's): ``start``, ``list``/``ls``, ``stop``/``restart``/
``reload``/``delete NAME|all``, ``save``, ``resurrect``, ``logs``, ``startup systemd``.
Argument parsing and printing only; the work is in ``manager.apps`` and ``manager.systemd``.

Hooking into the main CLI (what the caller must do):

- ``add_commands(subparsers)`` adds start, list (alias ls), delete, save, resurrect, logs
  and startup; ``add_commands(subparsers, lifecycle=True)`` also adds stop, restart and
  reload — leave it False while the control commands of those names exist, and call
  ``lifecycle(command, name)`` from them when ``is_app(name)`` or ``name == "all"``
  (a background app is stopped *and* recorded as stopped).
- ``handle(args)`` runs a parsed command of ours and returns the exit status
  (``handles(args.command)`` says whether it is ours); errors print one line
  ``pyclusterc: error: ...`` (status 1, or 2 for bad input).
- ``main(argv)`` is the same, standalone: ``python -m pyclusterc.cli.apps list``.
"""
import argparse
import json
import os
import sys

from ..manager import apps
from ..manager import control
from ..manager import systemd

__all__ = ["add_commands", "handle", "handles", "lifecycle", "is_app", "main", "format_list"]

_OURS = ("start", "list", "ls", "delete", "save", "resurrect", "logs", "startup")
_LIFECYCLE = ("stop", "restart", "reload")


class _Usage(Exception):
    """Bad input: one line, exit status 2."""


def add_commands(subparsers, lifecycle=False):
    p = subparsers.add_parser(
        "start", help="start an app (or every app of an ecosystem file) in the background",
        description="pyclusterc start TARGET [run's options]  |  pyclusterc start FILE [--only NAME]. "
                    "Starts detached from the terminal and returns once the app is ready; its output "
                    "goes to log files (pyclusterc logs). FILE is a pyclusterc.toml with [[apps]] tables "
                    "or a pyproject.toml with [[tool.pyclusterc.apps]].", add_help=True)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="TARGET|FILE ...")
    p = subparsers.add_parser("list", aliases=["ls"], help="list the background apps",
                              description="Every app of this user: state, workers, CPU, memory, requests/s.")
    p.add_argument("--json", action="store_true", help="one JSON array")
    for command, text in (("delete", "stop an app and forget it (its logs are kept)"),) + (
            (("stop", "stop an app; it stays listed"), ("restart", "replace all workers at once (or start it)"),
             ("reload", "rolling reload (or start it)")) if lifecycle else ()):
        p = subparsers.add_parser(command, help=text, description=text + ".")
        p.add_argument("name", metavar="NAME|all")
    subparsers.add_parser("save", help="record the apps running now", description="Record the apps "
                          "online now; `pyclusterc resurrect` and `startup systemd` use the record.")
    subparsers.add_parser("resurrect", help="start the saved apps again")
    p = subparsers.add_parser("logs", help="show an app's log lines", description="The last lines of "
                              "each app's out and error logs; --follow prints new lines as they come.")
    p.add_argument("name", metavar="NAME", nargs="?", help="default: every app")
    p.add_argument("--lines", type=_count, default=15, metavar="N", help="lines per log (default 15)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p = subparsers.add_parser("startup", help="write systemd units for the saved apps",
                              description="Write a unit file per saved app that runs it under systemd.")
    p.add_argument("init", choices=("systemd",), help="the init system (systemd)")
    p.add_argument("--user", action="store_true", help="user units (~/.config/systemd/user)")
    p.add_argument("--dir", metavar="DIR", help="write the units here instead")
    p.add_argument("--watchdog-sec", type=_seconds, metavar="SECONDS",
                   help="WatchdogSec=: systemd restarts a primary silent for this long")
    p.add_argument("--unit-user", metavar="USER", help="User= of system units")


def handles(command):
    return command in _OURS


def is_app(name):
    try:
        return name in apps.AppStore().names()
    except apps.AppsError:
        return False


def _count(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _seconds(text):
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected 0 to 86400 seconds, got {text!r}")
    return value


# ---- run's flags ---------------------------------------------------------------------------

def _run_flags():
    """Every flag `run` accepts, from the settings' one definition each."""
    from ..manager.settings import OPTIONS
    flags = {"--config"}
    for option in OPTIONS:
        flags.update(option.dest_flags)
        if option.negatable:
            flags.add("--no-" + option.name.replace("_", "-"))
    return flags


def _check_run_argv(argv, label):
    """Parse with run's own parser: the same one-line errors `pyclusterc run` gives."""
    from .parser import build_parser
    try:
        build_parser().parse_args(["run", *argv])
    except SystemExit:
        raise _Usage(f"{label}: invalid options for run") from None
    except Exception as e:  # noqa: BLE001 - run's parser raises its own UsageError
        raise _Usage(f"{label}: {e}") from None


def _log_flags(run_flags):
    # Once run has the log sink's flags, the app's files are written (and rotated) by the
    # sink; before that the keeper's redirected stdout/stderr fill the same files.
    return ["--log-max-size", "10M"] if "--log-file" in run_flags and "--log-max-size" in run_flags else []


# ---- commands --------------------------------------------------------------------------------

def cmd_start(store, args):
    items = list(args.args)
    if not items:
        raise _Usage("missing TARGET or FILE: pyclusterc start module:app [run's options] | start FILE [--only NAME]")
    run_flags = _run_flags()
    first = items[0]
    if first.endswith(".toml") and os.path.isfile(first):
        only = []
        rest = items[1:]
        while rest:
            if rest[0] == "--only" and len(rest) > 1:
                only.append(rest[1])
                rest = rest[2:]
            else:
                raise _Usage(f"unexpected {rest[0]!r} after {first}: only --only NAME may follow a FILE")
        specs = apps.read_ecosystem(first, run_flags)
        if only:
            unknown = set(only) - {s["name"] for s in specs}
            if unknown:
                raise _Usage(f"--only {sorted(unknown)[0]!r}: {first} has apps {', '.join(s['name'] for s in specs)}")
            specs = [s for s in specs if s["name"] in only]
    elif len(items) == 1 and first in store.names() and not os.path.exists(first):
        specs = [store.spec(first)]  # `start NAME`: a stopped app, as it was
    else:
        specs = [apps.spec_for(first, items[1:])]
    for spec in specs:
        _check_run_argv(spec["argv"], f"app {spec['name']!r}")
    names = apps.start(store, specs, _log_flags(run_flags))
    for name in names:
        out, err = store.log_paths(name)
        print(f"pyclusterc: {name}: online (logs: {out}, {err})")
    return 0


def _duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for size, unit, sub, subunit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // sub:02d}{subunit}"
    return f"{seconds}s"


def _mib(n):
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def format_list(rows):
    columns = ("name", "state", "pid", "workers", "uptime", "restarts", "cpu", "memory", "req/s")
    table = [[r["name"], r["state"], str(r["pid"] or "-"), str(r["workers"]), _duration(r["uptime"]),
              "-" if r["restarts"] is None else str(r["restarts"]),
              "-" if r["cpu"] is None else f"{r['cpu']:.1f}%", _mib(r["memory"]),
              "-" if r["rps"] is None else f"{r['rps']:.1f}"] for r in rows]
    if not table:
        return "no apps (start one with `pyclusterc start module:app`)"
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    lines += [f"{r['name']}: {r['state']}: {r['reason']}" for r in rows if r["state"] == "errored" and r["reason"]]
    lines += [f"{r['name']}: a foreground `pyclusterc run` (not a background app)" for r in rows if not r["app"]]
    return "\n".join(lines)


def cmd_list(store, args):
    rows = apps.list_apps(store)
    print(json.dumps(rows, indent=1) if args.json else format_list(rows))
    return 0


def lifecycle(command, name, store=None):
    """stop | restart | reload | delete NAME|all for background apps; prints one line each."""
    store = store or apps.AppStore()
    act = {"stop": apps.stop, "delete": apps.delete, "restart": apps.restart, "reload": apps.reload}[command]
    for each in store.resolve(name):
        print(f"pyclusterc: {act(store, each)}", flush=True)
    return 0


def cmd_save(store, args):
    names = apps.save(store)
    print(f"pyclusterc: saved {len(names)} app(s){': ' + ', '.join(names) if names else ''} "
          f"in {store.dump_path}")
    return 0


def cmd_resurrect(store, args):
    names = apps.resurrect(store)
    print(f"pyclusterc: resurrected {len(names)} app(s){': ' + ', '.join(names) if names else ''}")
    return 0


def cmd_logs(store, args):
    names = store.resolve(args.name) if args.name else store.names()
    sources = []  # (app, stream, path)
    for name in names:
        out, err = store.log_paths(name)
        sources += [(name, "out", out), (name, "error", err)]

    def show(app, stream, line):
        if args.json:
            entry = {"app": app, "stream": stream, "message": line}
            try:
                record = json.loads(line)  # --log-format json lines stay structured
                if isinstance(record, dict):
                    entry["record"] = record
            except ValueError:
                pass
            print(json.dumps(entry, ensure_ascii=False), flush=True)
        else:
            print(f"{app} {'|' if stream == 'out' else '!'} {line}", flush=True)
    for app, stream, path in sources:
        lines = apps.tail_lines(path, args.lines)
        if lines and not args.json:
            print(f"==> {path} (last {len(lines)} lines) <==")
        for line in lines:
            show(app, stream, line)
    if args.follow:
        where = {path: (app, stream) for app, stream, path in sources}
        try:
            apps.follow(list(where), lambda path, line: show(*where[path], line))
        except KeyboardInterrupt:
            pass
    return 0


def cmd_startup(store, args):
    specs = apps.saved_specs(store)
    if not specs:
        raise apps.AppsError("no saved apps: start them, then `pyclusterc save`, then `startup systemd`")
    directory = args.dir or systemd.default_unit_dir(args.user)
    paths = systemd.write_units(specs, directory, user=args.user, watchdog_sec=args.watchdog_sec,
                                run_as=args.unit_user)
    for path in paths:
        print(f"pyclusterc: wrote {path}")
    print("pyclusterc: to start them now and at boot, run:")
    for line in systemd.enable_commands([s["name"] for s in specs], args.user):
        print(f"  {line}")
    running = [s["name"] for s in specs if apps.inspect(store, s["name"])["state"] == "online"]
    if running:
        print(f"pyclusterc: stop the background copies first (`pyclusterc stop {' '.join(running)}`): "
              "they hold the same names and ports")
    return 0


_HANDLERS = {"start": cmd_start, "list": cmd_list, "ls": cmd_list, "save": cmd_save,
             "resurrect": cmd_resurrect, "logs": cmd_logs, "startup": cmd_startup}


def handle(args):
    try:
        store = apps.AppStore()
        if args.command in _HANDLERS:
            return _HANDLERS[args.command](store, args)
        return lifecycle(args.command, args.name, store)
    except _Usage as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 2
    except apps.AppsError as e:
        details = getattr(e, "details", "")
        if details:
            sys.stderr.write(details if details.endswith("\n") else details + "\n")
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 1
    except (control.ControlError, systemd.SystemdError) as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _Usage(message)


def main(argv=None):
    parser = _Parser(prog="pyclusterc", description="Background apps, PM2-style.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(subparsers, lifecycle=True)
    try:
        args = parser.parse_args(argv)
    except _Usage as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 2
    if args.command == "ls":
        args.command = "list"
    return handle(args)


if __name__ == "__main__":
    sys.exit(main())
