"""The process manager (PM2's model): ``ProcessManager`` built from a ``RunSettings``
value, with ``start``, ``reload``, ``restart``, ``scale``, ``stop``, ``status`` and ``run``.

- ``process``: ProcessManager and the worker state machine; ``jobs``: reload/restart/scale.
- ``settings``: every run setting declared once; RunSettings; the settings file.
- ``app``: loading the app; ``binding``: listening addresses; ``worker``: the worker
  entry point and the hooks servers get; ``relay``: worker output; ``control``: the
  control socket, both ends.

May import: every lower layer (``_lowlevel``, ``shared``, ``ipc``, ``cluster``, ``serve``,
``workers``); never ``cli``.
"""
__all__ = ["ProcessManager", "RunSettings", "WorkerRecord"]

# Loaded on first use (PEP 562): a control command (``pyclusterc reload``) imports
# ``manager.control`` and ``manager.settings`` only, and starts in a fraction of the
# time; its CPU lands on machines that are busy serving.
_PUBLIC = {"ProcessManager": "process", "WorkerRecord": "process", "RunSettings": "settings"}


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
