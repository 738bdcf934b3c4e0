"""Loading the app a cluster serves: ``module:attr``, a module's ``app``/``application``,
or a file; ASGI or WSGI detected. Errors are ``AppError`` with one line, plus the app's
own traceback (without our frames) when its code raised."""
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import types

__all__ = ["AppError", "load_target", "check_importable", "add_app_dir", "app_traceback"]


class AppError(Exception):
    """The app could not be loaded: one line, plus the traceback when the app raised."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


def load_target(target, interface, app_dir=None, factory=False):
    """(app, interface) with interface resolved to "asgi" | "wsgi". Raises AppError.
    An app factory (--factory, or gunicorn's "module:create_app()") is called here."""
    from .._lowlevel.options import OptionError
    from ..serve.options import factory_call, resolve_factory
    spelled = target
    try:
        target, call = factory_call(target)
    except OptionError as e:
        raise AppError(str(e)) from None
    add_app_dir(app_dir)
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
    if factory or call is not None:
        try:
            app = resolve_factory(app, types.SimpleNamespace(factory=True), call)
        except BaseException as e:  # noqa: BLE001 - the factory's own error
            if isinstance(e, KeyboardInterrupt):
                raise
            raise AppError(f"the app factory {spelled!r} failed: {type(e).__name__}: {e}",
                           app_traceback(e)) from None
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


def add_app_dir(app_dir):
    directory = os.path.abspath(app_dir or ".")
    if directory not in sys.path:
        sys.path.insert(0, directory)


def check_importable(target, app_dir):
    """In the primary, without running the app's code: is the module there at all (and
    a factory call spelled with literal arguments)? OptionError or AppError, one line."""
    from ..serve.options import factory_call
    target, _ = factory_call(target)
    if target.endswith(".py") or target.partition(":")[0].endswith(".py"):
        path = target.partition(":")[0] if not target.endswith(".py") else target
        if not os.path.isfile(path):
            raise AppError(f"cannot load {target!r}: no such file {path!r}")
        return
    add_app_dir(app_dir)
    module_name = target.partition(":")[0]  # "module:create_app()" too
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
                       app_traceback(e)) from None
    except BaseException as e:  # noqa: BLE001 - whatever the app raised while importing
        if isinstance(e, KeyboardInterrupt):
            raise
        raise AppError(f"importing {module_name!r} failed: {type(e).__name__}: {e}",
                       app_traceback(e)) from None


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
                       app_traceback(e)) from None
    return module


def app_traceback(exc):
    """The traceback of an error raised by the app's code, without our frames and
    importlib's in front of it."""
    ours = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(importlib.__file__), "<frozen")
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(ours):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
