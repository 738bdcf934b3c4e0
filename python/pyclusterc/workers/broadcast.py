"""BroadcastChannel: Node's one-to-many channel between processes on this host, over
abstract-namespace datagram sockets (no shared state, no server)."""
import itertools
import os
import pickle
import socket
import threading

from .._lowlevel.events import EventEmitter

__all__ = ["BroadcastChannel"]


class BroadcastChannel(EventEmitter):
    """Messages to every other BroadcastChannel of the same name on this host (any
    process). One datagram socket per instance in the abstract namespace; a message
    is pickled once and sent to each member (found in /proc/net/unix). Plain pickle:
    no SharedBuffers or transfers; at most about 200 KiB a message."""

    _counter = itertools.count()

    def __init__(self, name):
        super().__init__()
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"BroadcastChannel name must be a non-empty str without '/', got {name!r}")
        self.name = name
        self._prefix = f"pyclusterc-bc/{name}/"
        self._addr = f"\0{self._prefix}{os.getpid()}.{next(self._counter)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._addr)
        self._reader = None
        self._closed = False

    def _members(self):
        with open("/proc/net/unix") as f:
            for line in f:
                path = line.rstrip("\n").split(" ")[-1]
                if path.startswith("@" + self._prefix) and path[1:] != self._addr[1:]:
                    yield "\0" + path[1:]

    def post_message(self, message):
        if self._closed:
            raise ValueError("BroadcastChannel is closed")
        data = pickle.dumps(message, 5)
        for addr in set(self._members()):
            try:
                self._sock.sendto(data, addr)
            except (ConnectionRefusedError, FileNotFoundError):
                pass      # a member that closed between the listing and now

    postMessage = post_message

    def receive(self, timeout=None):
        self._sock.settimeout(timeout)
        try:
            return pickle.loads(self._sock.recv(1 << 20))
        except socket.timeout:
            raise TimeoutError(f"no message within {timeout} s") from None

    def on(self, event, callback):
        super().on(event, callback)
        if event == "message" and self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._reader.start()
        return self

    def _read_loop(self):
        while not self._closed:
            try:
                data = self._sock.recv(1 << 20)
            except OSError:
                return
            if not data and self._closed:
                return
            try:
                self.emit("message", pickle.loads(data))
            except Exception as e:  # noqa: BLE001
                self.emit("messageerror", e)

    def close(self):
        if not self._closed:
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

