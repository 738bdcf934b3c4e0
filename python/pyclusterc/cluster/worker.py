"""``cluster.worker`` inside a worker process: its channel to the primary (a reader thread
routes control replies and messages), listening, and the connection channel reads.

    primary ──conn channel──► next_connection (pc_channel_recv_conns, recvmmsg) ──► Listener.pending
    primary ◄─message channel─► reader thread: listen_result / disconnect / user messages
"""
import errno
import os
import queue
import socket
import sys
import threading
import types

from .._lowlevel.events import EventEmitter
from .._lowlevel.native import EAGAIN, EINTR, ffi, lib, os_error
from ..ipc.channel import KIND_CONN, KIND_CONTROL, KIND_DATA, ChannelClosed, loads
from .addresses import (CONN_MSG, PRIMARY_ACCEPTS, bind_listener, format_address, parse_address,
                        raw_sockaddr, signal_number)
from .listener import Listener
from .scoreboard import TrackedSocket

_EBADMSG = -errno.EBADMSG


class WorkerSelf(EventEmitter):
    """``cluster.worker`` inside a worker process."""

    def __init__(self, worker_id, channel, conns, slot, policy):
        super().__init__()
        self._conns = conns
        self.conn_fd = conns.fd
        self._conns_lock = threading.Lock()
        self._conn_msgs = ffi.new("struct pc_conn_msg[]", lib.PC_CHANNEL_RECV_CONNS_MAX)
        self._conn_fds = ffi.new("int[]", lib.PC_CHANNEL_RECV_CONNS_MAX)
        self._conn_bytes = ffi.buffer(self._conn_msgs)
        self.id = worker_id
        self.process = types.SimpleNamespace(pid=os.getpid())
        self.pid = os.getpid()
        self.state = "online"
        self.exited_after_disconnect = False
        self._channel = channel
        self.slot = slot
        self._policy = policy
        self._listeners = {}
        self._pending = {}
        self._next_req = 1
        self._disconnected = threading.Event()
        self._early_messages = []
        self._early_lock = threading.RLock()
        self._disconnect_emitted = False
        self._reader = threading.Thread(target=self._read_loop, name="pyclusterc-channel", daemon=True)
        self._reader.start()
        channel.send_object({"cmd": "online"}, KIND_CONTROL)

    def on(self, event, callback):
        super().on(event, callback)
        if event == "message":
            self._deliver_early()
        elif event == "disconnect":
            self._late_disconnect(callback)
        return self

    def once(self, event, callback):
        super().once(event, callback)
        if event == "message":
            self._deliver_early()
        elif event == "disconnect":
            self._late_disconnect(callback, once=True)
        return self

    def _late_disconnect(self, callback, once=False):
        """The reader thread may have emitted 'disconnect' just before this listener was
        added (a disconnect right after listen()): call it now rather than never."""
        with self._early_lock:
            missed = self._disconnect_emitted
        if missed:
            if once:
                self.off("disconnect", callback)
            callback()

    def _deliver_early(self):
        # Under the lock, so a message arriving meanwhile cannot overtake these.
        with self._early_lock:
            early, self._early_messages = self._early_messages, []
            for message in early:
                self.emit("message", message)

    def send(self, message):
        if self._disconnected.is_set():
            raise ChannelClosed(f"worker {self.id} is disconnected from the primary; message not sent")
        self._channel.send_object(message, KIND_DATA)
        return True

    def is_connected(self):
        return not self._disconnected.is_set()

    def is_dead(self):
        return False

    def kill(self, signal_name="SIGTERM"):
        """Node's worker-side kill(): disconnect, then exit 0 (not by the signal)."""
        signal_number(signal_name)  # checked as the primary side checks it
        self.disconnect()
        sys.stdout.flush()
        sys.stderr.flush()
        if threading.current_thread() is threading.main_thread():
            raise SystemExit(0)
        os._exit(0)

    destroy = kill

    def disconnect(self):
        """Close every listener, tell the primary, and stop talking to it."""
        if self._disconnected.is_set():
            return
        self.exited_after_disconnect = True
        for listener in list(self._listeners.values()):
            listener.close()
        try:
            self._channel.send_object({"cmd": "disconnected"}, KIND_CONTROL)
        except (ChannelClosed, OSError):
            pass
        self._disconnected.set()
        with self._early_lock:
            self._disconnect_emitted = True
            self.emit("disconnect")

    def wait_until_disconnected_if_listening(self):
        if self._listeners:
            self._disconnected.wait()

    def track(self, sock):
        """A connection the worker accepted itself (none/reuseport): count it open now
        and closed when it is closed, like the ones the primary hands over."""
        if self.slot is None:
            return sock
        timeout = sock.gettimeout()
        tracked = TrackedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        tracked.settimeout(timeout)
        tracked.slot = self.slot
        self.slot.connection_opened()
        return tracked

    # -- listening -------------------------------------------------------------------
    def listen(self, address, backlog=511):
        family, sockaddr = parse_address(address)
        if self._policy == "reuseport" and family == socket.AF_UNIX:
            raise ValueError("the reuseport policy needs a TCP address, not a Unix socket")
        reply, listener = self._request({"cmd": "listen", "family": family, "address": sockaddr,
                                              "backlog": backlog})
        if not reply["ok"]:
            raise OSError(reply["errno"], f"cannot listen on {format_address(sockaddr)}: {reply['message']}")
        address = reply["address"]
        if reply["policy"] == "none":
            sock = reply["socket"]
            sock.setblocking(False)
            listener = Listener(self, address, sock=sock)
        elif reply["policy"] == "reuseport":
            listener = Listener(self, address, sock=bind_listener(family, address, backlog, reuseport=True))
            self._channel.send_object({"cmd": "bound", "address": address}, KIND_CONTROL)
        self._listeners[reply["listener_id"]] = listener
        return listener

    def unlisten(self, listener):
        self._listeners.pop(listener.listener_id, None)
        if not self._disconnected.is_set():
            self._channel.send_object({"cmd": "unlisten", "listener_id": listener.listener_id}, KIND_CONTROL)

    def next_connection(self, listener, most=1):
        """(socket, raw sockaddr) of the next connection for `listener`, or None when
        none is waiting. Reads the connection channel, at most `most` connections per
        read and only when the listener's queue is empty: connections this worker will
        not serve now stay in the kernel (the primary reads them back if it dies).
        Those read for the worker's other listeners are queued on them."""
        with self._conns_lock:
            queue = listener.pending
            while not queue:
                n = lib.pc_channel_recv_conns(self.conn_fd, self._conn_msgs, self._conn_fds, most)
                if n > 0:
                    self._take_connections(n, listener)
                elif n == EAGAIN:
                    return None
                elif n == 0:
                    raise ChannelClosed("the primary closed the connection channel")
                elif n != EINTR and n != _EBADMSG:  # EBADMSG: malformed ones were dropped
                    raise os_error(n, "connection channel")
            return queue.popleft()

    def _take_connections(self, count, reader):
        if self.slot is not None:
            self.slot.connections_received(count)
        fds = self._conn_fds
        for i, (listener_id, addr_len, addr) in enumerate(
                CONN_MSG.iter_unpack(self._conn_bytes[:count * CONN_MSG.size])):
            owner = self._listeners.get(listener_id)
            family = reader.family if owner is None else owner.family
            # Family, type and proto given: the socket need not probe the fd (3 syscalls).
            sock = TrackedSocket(family, socket.SOCK_STREAM, 0, fileno=fds[i])
            sock.slot = self.slot
            if owner is None or owner.closed:
                self.return_connection(sock, listener_id, addr[:addr_len])
            elif owner is reader:
                owner.pending.append((sock, addr[:addr_len]))
            else:
                owner.deliver(sock, addr[:addr_len])

    def ready(self, source="app"):
        """Tell the primary this worker is ready: source "app" from pyclusterc.ready()
        (PM2's wait_ready), "server" when its server has started the app."""
        if not self._disconnected.is_set():
            self._channel.send_object({"cmd": "ready", "source": source}, KIND_CONTROL)

    def hand_back(self, sock, listener_id):
        """Give a connection back to the primary (which passes it to another worker);
        the caller still closes its own socket object (the connection stays open: the
        primary holds it now). False when it could not be sent."""
        try:
            sockaddr = raw_sockaddr(sock.getpeername(), sock.family)
            self._conns.send_bytes(CONN_MSG.pack(listener_id, len(sockaddr), sockaddr), KIND_CONN,
                                   [sock.fileno()])
        except (OSError, ChannelClosed, ValueError):
            return False
        return True

    def return_connection(self, sock, listener_id, sockaddr=b""):
        """A connection that reached a closed listener goes back to the primary."""
        try:
            self._conns.send_bytes(CONN_MSG.pack(listener_id, len(sockaddr), sockaddr), KIND_CONN,
                                   [sock.fileno()])
        finally:
            sock.close()

    def _request(self, message):
        req = self._next_req
        self._next_req += 1
        message["req"] = req
        answer = queue.SimpleQueue()
        self._pending[req] = answer
        self._channel.send_object(message, KIND_CONTROL)
        return answer.get()

    # -- the channel reader thread ---------------------------------------------------
    def _read_loop(self):
        channel = self._channel
        try:
            while True:
                channel.wait_readable()
                while True:
                    message = channel.receive()
                    if message is None:
                        break
                    self._route(*message)
        except (ChannelClosed, OSError):
            pass
        # The primary is gone: a worker does not outlive it.
        self._disconnected.set()
        os._exit(0)

    def _route(self, kind, payload, fds):
        if kind == KIND_CONTROL:
            message = loads(payload, fds)
            cmd = message.get("cmd")
            if cmd == "listen_result":
                listener = None
                if message["ok"] and message["policy"] in PRIMARY_ACCEPTS:
                    # Registered here, before the next message is read: connections
                    # for it may already follow this reply in the channel.
                    listener = Listener(self, message["address"], listener_id=message["listener_id"])
                    self._listeners[message["listener_id"]] = listener
                waiter = self._pending.pop(message["req"], None)
                if waiter is not None:
                    waiter.put((message, listener))
            elif cmd == "disconnect":
                self.disconnect()
        elif kind == KIND_DATA:
            message = loads(payload, fds)
            with self._early_lock:
                if not self.listener_count("message"):
                    # No listener yet: the primary may answer "online" before the
                    # worker's script has registered one. Keep it for the first.
                    self._early_messages.append(message)
                    return
            self.emit("message", message)
        else:
            for fd in fds:
                os.close(fd)
