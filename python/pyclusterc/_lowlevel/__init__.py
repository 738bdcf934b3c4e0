"""The lowest layer: the native module, errno -> OSError, timeouts and the PEP 475 restart
loop, EventEmitter, the wakeup pipe, child-process bodies and the usable-CPU count.

May import: the standard library and ``pyclusterc._native`` only.
"""
