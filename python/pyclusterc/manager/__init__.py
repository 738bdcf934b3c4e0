"""The process manager (PM2's model): worker records, reload/scale jobs, restart policy and
limits, the output relay, binding, app loading, the worker entry point, settings, and the
control socket (both ends).

May import: every lower layer (``_lowlevel``, ``shared``, ``ipc``, ``cluster``, ``serve``).
"""
