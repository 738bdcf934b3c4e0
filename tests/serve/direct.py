"""Run serve.wsgi.run / serve.asgi.run in this process, without the primary, for the
serve-level tests: ``python direct.py wsgi|asgi module:attr --fd N [options]``.

A feeder thread plays the primary: it accepts on the listening socket (inherited, and
shareable with a second generation) and on an inbox Unix socket where another server's
``hand_back`` sends connections (SCM_RIGHTS), and queues them for the server's listener.
Prints READY once ``hooks.ready()`` ran; SIGTERM makes it drain and exit."""
import argparse
import asyncio
import collections
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
import types

from pyclusterc.serve import options as serve_options


class FeedListener:
    """The Listener interface the servers use, fed by a thread."""

    def __init__(self, tcp, inbox=None):
        self.address = tcp.getsockname()
        self.closed = False
        self._queue = collections.deque()
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe()
        self._on_close = []
        threading.Thread(target=self._feed, args=(tcp, inbox), daemon=True).start()

    def _feed(self, tcp, inbox):
        tcp.setblocking(False)
        watch = [tcp, self._stop_r] + ([inbox] if inbox is not None else [])
        while not self.closed:
            ready = select.select(watch, [], [], 1.0)[0]
            if self._stop_r in ready:
                return
            if tcp in ready:
                try:
                    conn, peer = tcp.accept()
                except BlockingIOError:
                    conn = None
                if conn is not None:
                    self._put(conn, peer)
            if inbox is not None and inbox in ready:
                try:
                    channel, _ = inbox.accept()
                    _, fds, _, _ = socket.recv_fds(channel, 16, 1)
                    channel.close()
                except OSError:
                    fds = []
                for fd in fds:
                    conn = socket.socket(fileno=fd)
                    self._put(conn, conn.getpeername())

    def _put(self, conn, peer):
        conn.setblocking(True)
        self._queue.append((conn, peer))
        os.eventfd_write(self._event, 1)

    def fileno(self):
        if self.closed:
            raise ValueError("closed")
        return self._event

    def _pop(self):
        if self._queue:
            return self._queue.popleft()
        try:
            os.eventfd_read(self._event)
        except BlockingIOError:
            pass
        return self._queue.popleft() if self._queue else None

    def accept(self, timeout=None):
        got = self._pop()
        if got is None:
            raise BlockingIOError
        return got

    async def accept_async(self):
        loop = asyncio.get_running_loop()
        while True:
            got = self._pop()
            if got is not None:
                got[0].setblocking(False)
                return got
            wake = loop.create_future()
            loop.add_reader(self._event, lambda: wake.done() or wake.set_result(None))
            self._on_close.append(lambda: loop.call_soon_threadsafe(lambda: wake.done() or wake.set_result(None)))
            try:
                await wake
            finally:
                loop.remove_reader(self._event)
            if self.closed:
                raise ValueError("closed")

    async def serve(self, protocol_factory, batch=None):
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        self._on_close.append(lambda: loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(None)))

        def start():
            while (got := self._pop()) is not None:
                got[0].setblocking(False)
                loop.create_task(loop.connect_accepted_socket(protocol_factory, got[0]))
        loop.add_reader(self._event, start)
        try:
            if not self.closed:
                start()
                await stopped
        finally:
            loop.remove_reader(self._event)

    def close(self):
        if self.closed:
            return
        self.closed = True
        os.write(self._stop_w, b"x")
        for callback in self._on_close:
            callback()


def settings_for(overrides, threads=None):
    values = {option.name: option.default for option in serve_options.OPTIONS}
    # No access log unless a test asks: nothing reads this child's stdout after READY.
    values.update(kill_timeout=2.0, threads=threads, access_log=False)
    values.update(overrides)
    if values.get("header"):
        values["header"] = tuple(tuple(h) for h in values["header"])
    return types.SimpleNamespace(**values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("interface", choices=("wsgi", "asgi"))
    parser.add_argument("app")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--inbox", help="a Unix socket path: take handed-back connections here")
    parser.add_argument("--hand-back-to", help="the other generation's inbox path")
    parser.add_argument("--settings", default="{}", help="JSON: setting name -> value")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps"))
    import importlib
    settings = settings_for(json.loads(args.settings), args.threads)
    target, call = serve_options.factory_call(args.app)  # as the app loader does
    module, _, attr = target.partition(":")
    app = serve_options.resolve_factory(getattr(importlib.import_module(module), attr or "app"), settings, call)
    tcp = socket.socket(fileno=args.fd)
    inbox = None
    if args.inbox:
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        inbox.bind(args.inbox)
        inbox.listen(64)
    listener = FeedListener(tcp, inbox)
    callbacks = []
    # PYCLUSTERC_TEST_GC_REPORT=1: print how many objects the cyclic GC freed while
    # serving, from READY to the stop signal (test_garbage.py: a closed connection must
    # be freed by refcount alone). Not the shutdown's: that frees each request thread
    # (~25 objects), and a loaded machine starts more of them.
    gc_report = os.environ.get("PYCLUSTERC_TEST_GC_REPORT") == "1"
    collected_at_ready = []

    def on_stop(callback):
        callbacks.append(callback)

    def fire(*_):
        # Once, as the hooks contract says (manager/worker.py's WorkerHooks): a second
        # TERM (the drain test's stop()) changes nothing.
        if not callbacks:
            return
        if gc_report:
            gc.collect()
            freed = sum(gen["collected"] for gen in gc.get_stats()) - collected_at_ready[0]
            print(f"GC {freed}", flush=True)
        for callback in callbacks[:]:
            callback()
        callbacks.clear()
    signal.signal(signal.SIGTERM, fire)

    def hand_back(sock):
        if not args.hand_back_to:
            return False
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            channel.connect(args.hand_back_to)
            socket.send_fds(channel, [b"c"], [sock.fileno()])
        except OSError:
            return False
        finally:
            channel.close()
        return True

    def ready():
        if gc_report:
            gc.collect()
            collected_at_ready.append(sum(gen["collected"] for gen in gc.get_stats()))
        print("READY", flush=True)

    # A scoreboard slot, as every worker of `pyclusterc run` has (the servers count
    # requests in it).
    from pyclusterc.cluster.scoreboard import SLOT_BYTES, ScoreSlot
    from pyclusterc.shared.buffer import SharedBuffer
    slot = ScoreSlot(SharedBuffer(SLOT_BYTES), 0)
    hooks = types.SimpleNamespace(on_stop=on_stop, ready=ready,
                                  heartbeat=lambda stamp=None: None, slot=slot, live_counts=False,
                                  hand_back=hand_back)
    if os.environ.get("PYCLUSTERC_TEST_RECORD") == "1":
        # Metrics on, as --metrics-bind makes them (manager/worker.py's WorkerHooks).
        hooks.metrics_slot = slot
    if args.interface == "wsgi":
        from pyclusterc.serve import wsgi
        code = wsgi.run(app, [listener], settings, hooks)
    else:
        from pyclusterc.serve import asgi
        code = asgi.run(app, [listener], settings, hooks)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
