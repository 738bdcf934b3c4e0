"""HTTP serving inside a cluster worker: ASGI through uvicorn's protocols (``asgi``) and a
threaded WSGI server over httptools (``wsgi``); the settings they read (``options``).

Both entry points are ``run(app, listeners, settings, hooks) -> exit status``:

- ``listeners``: the worker's ``cluster.Listener`` objects (connections from the primary).
- ``settings``: the frozen ``RunSettings``; serving reads the attributes declared in
  ``serve.options`` and ``kill_timeout``.
- ``hooks``, given by the worker entry point (``manager.worker``):
  ``on_stop(callback)`` — callback runs once when the worker must drain;
  ``ready()`` — call once when the app has started (ASGI: lifespan startup complete on
  every loop; WSGI: serving): the primary hands the worker no connection before;
  ``heartbeat(stamp_ns=None)`` — the loop is making progress (``--timeout``);
  ``slot`` — the worker's scoreboard slot or None; ``live_counts`` — keep in-flight counts
  live (``--sched least``); ``metrics_slot`` — the slot (or None) each response's status
  and duration go into when metrics are served: its ``record_since(status, started)``
  (started: ``time.monotonic()`` when the request began; the duration is taken in C),
  or its ``pointer`` given to the access log's ``add_request``, which records too;
  ``hand_back(sock) -> bool`` — while draining: give an idle keep-alive connection (nothing
  buffered, no request in progress) back to the primary, which passes it to a ready
  worker; False when it cannot (then close it at a safe point).

May import: ``_lowlevel``, ``shared``, ``ipc``, and the third-party servers' code; never
``cluster`` (listeners come in as objects), ``workers``, ``manager`` or ``cli``.
"""
