"""argparse for ``pyclusterc``: ``run``'s flags are generated from the settings' one
definition each (``manager.settings.OPTIONS``), so flags, files and checks agree."""
import argparse

from ..manager.settings import OPTIONS

__all__ = ["build_parser", "UsageError", "run_flags"]


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _argparse_type(option):
    def convert(text):
        try:
            return option.parse(text)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(option.explain(text, e)) from None
    convert.__name__ = option.name.replace("_", "-")
    return convert


def add_run_options(parser):
    """Every run setting as a flag; defaults stay None (meaning: not given), so the
    settings file can fill what the command line leaves out."""
    groups = {}
    for option in OPTIONS:
        target = parser
        if option.group:
            target = groups.get(option.group) or groups.setdefault(option.group, parser.add_argument_group(option.group))
        if option.is_switch:
            target.add_argument(*option.dest_flags, dest=option.name, action="store_true", default=None,
                                help=option.help)
            if option.negatable:
                target.add_argument("--no-" + option.name.replace("_", "-"), dest=option.name,
                                    action="store_false", help=argparse.SUPPRESS)
        else:
            target.add_argument(*option.dest_flags, dest=option.name, type=_argparse_type(option),
                                action="append" if option.repeat else "store", default=None,
                                metavar=option.metavar, help=option.help)


def run_flags(args):
    """{setting name: value} for the flags given (repeatable ones as tuples)."""
    flags = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is not None:
            flags[option.name] = tuple(value) if option.repeat else value
    if getattr(args, "target", None) is not None:
        flags["target"] = args.target
    return flags


CONTROL_COMMANDS = (
    ("status", "show the workers of a running cluster"),
    ("reload", "replace every worker, one at a time, without dropping a request (NAME|all)"),
    ("restart", "replace every worker at once (NAME|all)"),
    ("stop", "stop a running cluster or background app gracefully (NAME|all)"),
    ("metrics", "print a running cluster's metrics in Prometheus text format"),
    ("monit", "a live view: workers with CPU and memory, requests/s, the log tail; q quits"),
    ("scale", "set the worker count of a running cluster"),
)


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
                    "[tool.pyclusterc] in pyproject.toml, from pyclusterc.toml or from --config FILE; "
                    "flags win. Durations take 3, 3s or 3000ms; sizes 300M or 1G.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  pyclusterc run myapp:app -i max -b 0.0.0.0:8000\n"
               "  pyclusterc run myapp.wsgi --threads 16 --preload\n"
               "  pyclusterc run server.py -i 4\n\n"
               "signals to the primary: TERM/INT drain and stop, HUP rolling reload, TTIN/TTOU one\n"
               "worker more/fewer, USR1 reopen log files; USR2 and WINCH are ignored.\n"
               "Each worker sees its index, 0..N-1 (kept by its replacement), in PYCLUSTERC_WORKER_ID.")
    run.error = parser.error
    run.add_argument("target", metavar="TARGET", nargs="?",
                     help="module:attr (ASGI or WSGI app, detected), module (uses its `app` or "
                          "`application`), or path/to/script.py (runs in each worker)")
    run.add_argument("--config", metavar="FILE", help="read settings from FILE (TOML: a pyclusterc.toml, "
                     "or a pyproject.toml's [tool.pyclusterc])")
    add_run_options(run)
    for command, text in CONTROL_COMMANDS:
        sub = commands.add_parser(command, help=text, description=text + ".")
        sub.error = parser.error
        if command == "scale":
            sub.add_argument("count", metavar="N", type=_positive, help="the new worker count")
        sub.add_argument("name", metavar="NAME", nargs="?", default=None,
                         help="the cluster's name (default: the only one running)")
        if command == "monit":
            sub.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                             help="refresh period (default 1)")
            sub.add_argument("--once", action="store_true", help="print the table once and exit")
        if command == "status":
            sub.add_argument("--json", action="store_true", help="the status as JSON")
    from . import apps
    apps.add_commands(commands)  # start, list/ls, delete, save, resurrect, logs, startup
    return parser


def _positive(text):
    from .._lowlevel.options import positive_int
    try:
        return positive_int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got {text!r}") from None


def _interval(text):
    from .._lowlevel.options import seconds
    try:
        return seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got {text!r}") from None

