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
from .process import ProcessManager, WorkerRecord
from .settings import RunSettings

__all__ = ["ProcessManager", "RunSettings", "WorkerRecord"]
