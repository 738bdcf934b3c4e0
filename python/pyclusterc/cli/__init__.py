"""``pyclusterc``: the command line, thin over ``pyclusterc.manager``.

    run TARGET  ─► settings.resolve ─► binding.bind_all ─► ProcessManager.start/run
    status | reload | restart | scale N | stop | metrics | monit [NAME]
                ─► manager.control.request ─► the running primary's ProcessManager

May import every layer below it.
"""
import dataclasses
import gc
import importlib
import os
import signal
import sys

from ..manager.app import AppError, check_importable, load_target
from ..manager.control import ControlError
from ..manager.settings import ConfigError
from .._lowlevel.options import OptionError
from .parser import UsageError, build_parser, run_flags

__all__ = ["main"]


def run_command(args):
    from .. import cluster
    from ..manager import binding, settings as run_settings
    from ..manager.process import ProcessManager
    from ..manager.logs import LogSink
    from ..manager.relay import OutputRelay
    from ..manager.worker import worker_main
    settings = run_settings.resolve(run_flags(args), config_path=args.config)
    from ..serve.options import check as check_serving
    check_serving(settings)
    relay = OutputRelay()
    relay.sink = sink = LogSink.from_options(settings, stdout=relay.out, stderr=relay.err)

    def say(text, error=False):
        sink.primary_line("error" if error else "info", f"pyclusterc: {'error: ' if error else ''}{text}")
    os.environ.update(run_settings.env_dict(settings))
    cluster.scheduling_policy = settings.sched
    check_importable(settings.target, settings.app_dir)
    app = interface = None
    if settings.preload:
        app, interface = load_target(settings.target, settings.interface, settings.app_dir,
                                             factory=settings.factory)
        gc.collect()
        # Import the server module too, so its pages are shared like the app's.
        importlib.import_module("pyclusterc.serve.asgi" if interface == "asgi" else "pyclusterc.serve.wsgi")
        # And the idna codec: werkzeug's first request (and getaddrinfo on a name) would
        # import it in every worker, ~0.8 MiB of private pages each.
        importlib.import_module("encodings.idna")
        gc.freeze()  # keep the imported objects' pages shared after fork
        settings = dataclasses.replace(settings, interface=interface)
    try:
        addresses = binding.bind_all(settings.bind, settings.sched, settings.interface == "script",
                                     backlog=settings.backlog, say=say)
    except OSError as e:
        raise UsageError(str(e)) from None
    settings = dataclasses.replace(settings, addresses=addresses)
    manager = ProcessManager(settings, relay=relay, say=say)

    def worker_entry():  # in each forked worker
        sink.forget_in_child()
        worker_main(settings, app, interface, close_fds=manager.primary_only_fds())
    manager.worker_target = worker_entry
    manager.start()
    code = manager.run()
    # Stopped: a late TERM or INT has nothing left to stop, and at exit the interpreter
    # puts back the default handlers, under which it would turn exit 0 into -15.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    return code


def control_command(args):
    """status | reload | restart | scale N | stop | monit | metrics [NAME]."""
    from ..manager import control
    from . import apps
    if args.command in ("stop", "restart", "reload") and args.name is not None and (
            args.name == "all" or apps.is_app(args.name)):
        return apps.handle(args)  # a background app: its record follows too
    name = control.resolve_name(args.name)
    if args.command in ("monit", "status"):
        from . import monit  # rich: only where a table is drawn
    if args.command == "monit":
        try:
            monit.main(name, args.interval, args.once)
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "status":
        print(monit.status_text(name, as_json=args.json))
    elif args.command == "metrics":
        from ..manager.metrics import render
        reply = control.request(name, "metrics", timeout=10.0)
        sys.stdout.write(render(lambda: reply).decode())
    else:
        fields = {"count": args.count} if args.command == "scale" else {}
        # These answer when done: every worker replaced, or the primary gone.
        reply = control.request(name, args.command, timeout=600.0, **fields)
        print(f"pyclusterc: {name}: {reply.get('message', 'done')}")
    return 0


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "run":
            return run_command(args)
        from . import apps
        if apps.handles(args.command):
            return apps.handle(args)
        return control_command(args)
    except ControlError as e:
        print(f"pyclusterc: error: {e}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, OptionError, ValueError) as e:
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
