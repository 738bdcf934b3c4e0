"""Messages between processes: the framed SOCK_SEQPACKET channel with its fd-carrying
pickler (``channel``), and the shared-memory rings of worker_threads ports (``ring``).

May import: ``_lowlevel``, ``shared``.
"""
