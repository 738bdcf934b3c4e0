"""HTTP serving inside a cluster worker: ASGI through uvicorn's protocols (``asgi``) and a
threaded WSGI server over httptools (``wsgi``). Each takes the worker's Listeners and
serves until told to stop.

May import: ``_lowlevel``, ``shared``, ``ipc``, and the third-party servers' code.
"""
