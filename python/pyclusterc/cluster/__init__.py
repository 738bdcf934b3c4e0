"""``node:cluster`` for Python: a primary forks workers that share server ports.

The primary accepts connections in C (csrc/dispatch.c, GIL released) and passes each
one to a worker over the worker's channel (SCM_RIGHTS). Python here handles the
lifecycle: forking, worker messages, exits, listen requests, shutdown.

Primary side: ``fork``, ``workers``, ``run``, ``shutdown``, ``disconnect``, events.
Worker side: ``worker`` (itself), ``listen`` (a Listener fed by the primary), ``worker.send``.
"""
import asyncio
import collections
import errno
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
import types

from .._lowlevel.native import EAGAIN, EINTR, ffi, lib, os_error, timeout_ns
from ..ipc.channel import (KIND_CONN, KIND_CONTROL, KIND_DATA, Channel, ChannelClosed, dumps,
                      loads)
from .._lowlevel.events import EventEmitter
from ..shared.buffer import BigUint64Array, SharedBuffer, Uint32Array

__all__ = ["fork", "run", "shutdown", "disconnect", "setup_primary", "listen", "on", "once",
           "off", "Worker", "Listener", "SCHEDULING_POLICIES"]

SCHEDULING_POLICIES = ("rr", "least", "sticky", "none", "reuseport")
_PRIMARY_ACCEPTS = {"rr": lib.PC_SCHED_RR, "least": lib.PC_SCHED_LEAST,
                    "sticky": lib.PC_SCHED_STICKY}

_ENV_ID = "PYCLUSTERC_WORKER_ID"
_ENV_CHANNEL = "PYCLUSTERC_CHANNEL_FD"      # messages and control, both ways
_ENV_CONNS = "PYCLUSTERC_CONN_FD"           # connections from the primary's loop
_ENV_PRIMARY = "PYCLUSTERC_PRIMARY_PID"
_ENV_POLICY = "PYCLUSTERC_SCHED_POLICY"
_ENV_SCOREBOARD = "PYCLUSTERC_SCOREBOARD_FD"
_ENV_SLOT = "PYCLUSTERC_SCORE_SLOT"

_SERVE_BATCH = 8     # connections Listener.serve takes per channel read
_EBADMSG = -errno.EBADMSG
_SLOT_BYTES = 64
_MAX_SLOTS = 1024
# Score slot fields, as indexes into 32- and 64-bit views of a slot (see pc_dispatch.h).
_U32_PID, _U32_STATE, _U32_INFLIGHT, _U32_CONNECTIONS = 0, 1, 6, 7
_U64_HEARTBEAT, _U64_REQUESTS, _U64_HANDED = 1, 2, 4


def _check_policy(name):
    if name not in SCHEDULING_POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; use one of {', '.join(SCHEDULING_POLICIES)}")
    return name


# ---- addresses ------------------------------------------------------------------

def parse_address(address, default_host="0.0.0.0"):
    """Port | (host, port) | "host:port" | "[v6]:port" | "unix:/path" -> (family, sockaddr)."""
    def bad():
        return ValueError(f"invalid address {address!r}: use a port number, (host, port), "
                          "'host:port', '[::1]:port' or 'unix:/path'")

    if isinstance(address, bool):
        raise bad()
    if isinstance(address, int):
        host, port = default_host, address
    elif isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int):
        host, port = address
    elif isinstance(address, str) and address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise bad()
        return socket.AF_UNIX, path
    elif isinstance(address, str) and ":" in address:
        host, _, port_text = address.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not port_text.isdigit():
            raise bad()
        port = int(port_text)
    elif isinstance(address, str) and address.isdigit():
        host, port = default_host, int(address)
    else:
        raise bad()
    if not isinstance(host, str) or not 0 <= port <= 65535:
        raise bad()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host or "0.0.0.0")
    except OSError:
        if host != "localhost":
            raise bad() from None
        host = "127.0.0.1"
    return family, (host, port)


def bind_listener(family, sockaddr, backlog, reuseport=False, listen=True):
    """A non-blocking, close-on-exec listening socket. OSError names the address."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {format_address(sockaddr)}: {e.strerror}") from None
    return sock


def format_address(sockaddr):
    if isinstance(sockaddr, str):
        return f"unix:{sockaddr}"
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_CONN_MSG = struct.Struct("=II128s")  # struct pc_conn_msg: listener_id, addr_len, addr
_FAMILY = struct.Struct("=H")
_HOSTS = {}  # packed IP -> text: a server sees the same few client addresses again and again


def _decode_peer(sockaddr):
    """A client's address as accept() gives it, from the raw sockaddr in a
    PC_MSG_CONN payload: (host, port) for IPv4 and IPv6, "" for anything else."""
    if len(sockaddr) >= 8:
        family = _FAMILY.unpack_from(sockaddr)[0]
        if family == socket.AF_INET:
            packed = sockaddr[4:8]
        elif family == socket.AF_INET6 and len(sockaddr) >= 24:
            packed = sockaddr[8:24]
        else:
            return ""
        host = _HOSTS.get(packed)
        if host is None:
            if len(_HOSTS) >= 4096:
                _HOSTS.clear()
            host = _HOSTS[packed] = socket.inet_ntop(family, packed)
        return host, sockaddr[2] << 8 | sockaddr[3]
    return ""


# ---- the scoreboard: one shared slot per worker ------------------------------------

class ScoreSlot:
    """A worker's slot in the scoreboard; the primary's `least` policy reads it."""

    def __init__(self, board, index):
        self.index = index
        self.u32 = Uint32Array(board, index * _SLOT_BYTES, _SLOT_BYTES // 4)
        self.u64 = BigUint64Array(board, index * _SLOT_BYTES, _SLOT_BYTES // 8)

    def connections_received(self, count):
        """count connections arrived from the primary: `least` stops counting them as
        queued. Once per batch, straight to the atomics (the hot path)."""
        lib.pc_add_u64(self.u64._ptr, _U64_HANDED, count)
        lib.pc_add_u32(self.u32._ptr, _U32_CONNECTIONS, count)

    # `requests` counts what servers report through request_finished (HTTP requests);
    # connections are counted apart, so a keep-alive connection is not a request.
    def connection_opened(self):
        self.u32.add(_U32_CONNECTIONS, 1)

    def connection_closed(self):
        lib.pc_sub_u32(self.u32._ptr, _U32_CONNECTIONS, 1)

    # Per request under ASGI and WSGI: straight to the atomics, like the batch above.
    def request_started(self):
        lib.pc_add_u32(self.u32._ptr, _U32_INFLIGHT, 1)

    def request_finished(self):
        lib.pc_sub_u32(self.u32._ptr, _U32_INFLIGHT, 1)
        lib.pc_add_u64(self.u64._ptr, _U64_REQUESTS, 1)

    def publish(self, requests, inflight, connections):
        """Totals a server keeps itself, published now and then instead of per request."""
        self.u64.store(_U64_REQUESTS, requests)
        self.u32.store(_U32_INFLIGHT, inflight)
        self.u32.store(_U32_CONNECTIONS, connections)

    def clear(self):
        for i in range(len(self.u64)):
            self.u64.store(i, 0)

    def snapshot(self):
        return {"pid": self.u32.load(_U32_PID), "inflight": self.u32.load(_U32_INFLIGHT),
                "connections": self.u32.load(_U32_CONNECTIONS),
                "requests": self.u64.load(_U64_REQUESTS)}


class _TrackedSocket(socket.socket):
    """An accepted connection that tells the scoreboard when it is closed."""

    _slot = None

    def _untrack(self):
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.connection_closed()

    def close(self):
        self._untrack()
        super().close()

    def detach(self):
        # uvloop's transports detach the socket object and close the fd themselves.
        self._untrack()
        return super().detach()


# ---- primary side ---------------------------------------------------------------

class Worker(EventEmitter):
    """The primary's handle on a worker process (Node's cluster.Worker)."""

    def __init__(self, state, worker_id, pid, process, channel, conns, worker_conn_end, slot):
        super().__init__()
        self._state_owner = state
        self.id = worker_id
        self.pid = pid
        self.process = process
        self.state = "none"
        self.exited_after_disconnect = False
        self.exit_code = None
        self.signal_code = None
        self.listening = []
        self.ready = False
        self._channel = channel            # messages
        self._conns = conns                # the loop sends connections on this one
        self._worker_end = worker_conn_end  # kept so queued connections survive a crash
        self._slot = slot
        self._pidfd = None
        self._disconnected = False

    def __repr__(self):
        return f"<Worker id={self.id} pid={self.pid} state={self.state}>"

    def send(self, message):
        """Send any picklable object; SharedBuffers and sockets travel by fd."""
        if self.is_dead() or self._disconnected:
            raise ChannelClosed(f"worker {self.id} is {'dead' if self.is_dead() else 'disconnected'}; "
                                "message not sent")
        self._channel.send_object(message, KIND_DATA)
        return True

    def kill(self, signal_name="SIGTERM"):
        """Signal the worker (name or number); it counts as an intended exit."""
        signum = _signal_number(signal_name)
        self.exited_after_disconnect = True
        if not self.is_dead():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    destroy = kill

    def disconnect(self):
        """Ask the worker to close its listeners and exit once its work is done."""
        self.exited_after_disconnect = True
        if self.is_dead() or self._disconnected:
            return
        self.state = "disconnecting"
        self._state_owner.stop_feeding(self)
        try:
            self._channel.send_object({"cmd": "disconnect"}, KIND_CONTROL)
        except ChannelClosed:
            pass

    def is_connected(self):
        return not self._disconnected and not self.is_dead()

    def is_dead(self):
        return self.exit_code is not None or self.signal_code is not None

    def score(self):
        return self._slot.snapshot() if self._slot else {}


def _signal_number(sig):
    if isinstance(sig, int) and not isinstance(sig, bool):
        return sig
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal, name):
            return getattr(signal, name)
    raise ValueError(f"unknown signal {sig!r}; use a name like 'SIGTERM' or a number")


class _Server:
    """A listening socket the primary owns for one address, shared by workers."""

    def __init__(self, listener_id, sock, address):
        self.id = listener_id
        self.sock = sock
        self.address = address
        self.workers = set()


class _Primary(EventEmitter):
    def __init__(self, module):
        super().__init__()
        self.module = module
        self.workers = {}
        self.settings = {}
        self.next_id = 1
        self.next_listener = 1
        self.policy = _check_policy(os.environ.get(_ENV_POLICY, "rr"))
        self.dispatch = None
        self.servers = {}             # address key -> _Server
        self.tokens = {}              # watched fd token -> callback
        self.next_token = 1
        self.scoreboard = None
        self.free_slots = list(range(_MAX_SLOTS - 1, -1, -1))
        self.stop_requested = False
        self.kill_deadline = None
        self.events = ffi.new("struct pc_event[64]")

    # -- setup -------------------------------------------------------------------
    def ensure_dispatch(self):
        if self.dispatch is None:
            err = ffi.new("int *")
            sched = _PRIMARY_ACCEPTS.get(self.policy, lib.PC_SCHED_RR)
            d = lib.pc_dispatch_new(sched, err)
            if d == ffi.NULL:
                raise os_error(err[0], "cannot create the dispatch loop")
            self.dispatch = ffi.gc(d, lib.pc_dispatch_free)
            self.scoreboard = SharedBuffer(_SLOT_BYTES * _MAX_SLOTS)
        return self.dispatch

    def watch(self, fd, callback):
        token = self.next_token
        self.next_token += 1
        rc = lib.pc_dispatch_watch(self.ensure_dispatch(), fd, token)
        if rc < 0:
            raise os_error(rc, f"cannot watch fd {fd}")
        self.tokens[token] = callback
        return token

    # -- fork --------------------------------------------------------------------
    def fork(self, env=None):
        if env is not None and (not isinstance(env, dict) or
                                not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise TypeError("cluster.fork(env) takes a dict of str to str")
        dispatch = self.ensure_dispatch()
        worker_id = self.next_id
        self.next_id += 1
        # Two channels: connections wait in their own queue, read only when the worker
        # accepts, so a blocked or crashed worker's queue can be handed to another.
        fds = ffi.new("int[4]")
        rc = lib.pc_channel_pair(fds)
        if rc >= 0:
            rc = lib.pc_channel_pair(fds + 2)
            if rc < 0:
                os.close(fds[0])
                os.close(fds[1])
        if rc < 0:
            raise os_error(rc, f"cannot create the channels for worker {worker_id}")
        primary_end, worker_end, conn_primary_end, conn_worker_end = fds[0], fds[1], fds[2], fds[3]
        slot_index = self.free_slots.pop()
        board_fd = self.scoreboard.fileno()
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env.update({_ENV_ID: str(worker_id), _ENV_CHANNEL: str(worker_end),
                          _ENV_CONNS: str(conn_worker_end),
                          _ENV_PRIMARY: str(os.getpid()), _ENV_POLICY: self.policy,
                          _ENV_SCOREBOARD: str(board_fd), _ENV_SLOT: str(slot_index)})
        try:
            if self.settings.get("fork"):
                pid, process = self._fork_preloaded((primary_end, conn_primary_end), child_env), None
            else:
                process = self._spawn((worker_end, conn_worker_end, board_fd), child_env)
                pid = process.pid
        except BaseException:
            for fd in (primary_end, worker_end, conn_primary_end, conn_worker_end):
                os.close(fd)
            self.free_slots.append(slot_index)
            raise
        # Our copy of the message end would hide the worker's exit from us.
        os.close(worker_end)
        slot = ScoreSlot(self.scoreboard, slot_index)
        slot.u32.store(_U32_PID, pid)
        worker = Worker(self, worker_id, pid, process, Channel(primary_end), Channel(conn_primary_end),
                        conn_worker_end, slot)
        self.workers[worker_id] = worker
        worker._channel_token = self.watch(primary_end, lambda w=worker: self.on_worker_readable(w))
        check_rc(lib.pc_dispatch_add_worker(dispatch, worker_id, conn_primary_end,
                                            ffi.cast("struct pc_score_slot *", slot.u32._ptr)),
                 f"worker {worker_id}")
        worker._pidfd = os.pidfd_open(pid)
        worker._pidfd_token = self.watch(worker._pidfd, lambda w=worker: self.on_exit(w))
        self.emit("fork", worker)
        return worker

    def _spawn(self, pass_fds, env):
        import subprocess
        argv = self.settings.get("exec")
        if argv is None:
            argv = [sys.executable, *sys.orig_argv[1:]]
        elif isinstance(argv, str):
            argv = [sys.executable, argv, *self.settings.get("args", [])]
        return subprocess.Popen(argv, env=env, pass_fds=pass_fds,
                                cwd=self.settings.get("cwd"))

    def _fork_preloaded(self, primary_ends, env):
        target = self.settings.get("target")
        pid = os.fork()
        if pid:
            return pid
        # Child: become a worker of the (already imported) program, never return.
        code = 0
        try:
            for fd in primary_ends:
                os.close(fd)
            for other in self.workers.values():
                other._channel.close()
                other._conns.close()
                os.close(other._worker_end)
            for server in self.servers.values():
                server.sock.close()
            os.environ.update(env)
            self.module._become_worker()
            if target is not None:
                target()
            else:
                _rerun_main()
            worker_state = self.module._state
            if isinstance(worker_state, _WorkerSelf):
                worker_state.wait_until_disconnected_if_listening()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    # -- listen requests from workers ----------------------------------------------
    def server_for(self, family, sockaddr, backlog):
        key = (family, sockaddr)
        server = self.servers.get(key)
        if server is None:
            for (fam, addr), existing in self.servers.items():
                # listen(0) in several workers shares the first worker's port (Node).
                if fam == family and isinstance(addr, tuple) and sockaddr[1] == 0 and addr[0] == sockaddr[0]:
                    return existing
            reuseport = self.policy == "reuseport"
            sock = bind_listener(family, sockaddr, backlog, reuseport=reuseport, listen=not reuseport)
            server = self.add_server(key, sock, sock.getsockname())
        return server

    def add_server(self, key, sock, address):
        """Register a listening socket (bound here, inherited, or from systemd) under
        key = (family, sockaddr), the address workers will ask to listen on."""
        server = _Server(self.next_listener, sock, address)
        self.next_listener += 1
        self.servers[key] = server
        if self.policy in _PRIMARY_ACCEPTS:
            check_rc(lib.pc_dispatch_add_listener(self.ensure_dispatch(), server.id, sock.fileno()),
                     f"listener {format_address(address)}")
        return server

    def handle_listen(self, worker, request):
        reply = {"cmd": "listen_result", "req": request["req"]}
        try:
            family, sockaddr = request["family"], request["address"]
            server = self.server_for(family, sockaddr, request.get("backlog", 511))
        except OSError as e:
            reply.update(ok=False, errno=e.errno, message=e.strerror or str(e))
        else:
            reply.update(ok=True, listener_id=server.id, address=server.address, policy=self.policy)
            if self.policy in _PRIMARY_ACCEPTS:
                check_rc(lib.pc_dispatch_worker_listen(self.dispatch, worker.id, server.id),
                         f"worker {worker.id}")
            elif self.policy == "none":
                reply["socket"] = server.sock  # travels by fd: the worker accepts on it
            server.workers.add(worker.id)
        worker._channel.send_object(reply, KIND_CONTROL)
        if reply["ok"]:
            worker.listening.append(server.address)
            worker.state = "listening"
            worker.emit("listening", server.address)
            self.emit("listening", worker, server.address)

    def stop_feeding(self, worker):
        """No new connections go to this worker (it is disconnecting)."""
        if self.dispatch is not None:
            lib.pc_dispatch_remove_worker(self.dispatch, worker.id)

    # -- events ------------------------------------------------------------------
    def on_worker_readable(self, worker):
        """Messages and control requests from a worker (its message channel)."""
        while not worker._channel.closed:
            try:
                message = worker._channel.receive()
            except ChannelClosed:
                self.unwatch(worker._channel.fd, worker._channel_token)
                self.on_disconnect(worker)
                return
            if message is None:
                return
            kind, payload, fds = message
            if kind == KIND_DATA:
                obj = loads(payload, fds)
                worker.emit("message", obj)
                self.emit("message", worker, obj)
            elif kind == KIND_CONTROL:
                self.on_control(worker, loads(payload, fds))
            else:
                for fd in fds:
                    os.close(fd)

    def read_connections(self, channel):
        """Connections read back from a worker's connection channel go to others."""
        while True:
            try:
                message = channel.receive()
            except (ChannelClosed, OSError):
                return
            if message is None:
                return
            kind, payload, fds = message
            if kind == KIND_CONN:
                self.redistribute(payload, fds)
            else:
                for fd in fds:
                    os.close(fd)

    def unwatch(self, fd, token):
        if self.tokens.pop(token, None) is not None:
            lib.pc_dispatch_unwatch(self.dispatch, fd)

    def on_control(self, worker, request):
        cmd = request.get("cmd")
        if cmd == "online":
            worker.state = "online"
            worker.emit("online")
            self.emit("online", worker)
        elif cmd == "listen":
            self.handle_listen(worker, request)
        elif cmd == "ready":
            worker.ready = True
            worker.emit("ready")
            self.emit("ready", worker)
        elif cmd == "disconnected":
            self.on_disconnect(worker)
        elif cmd == "unlisten":
            self.handle_unlisten(worker, request["listener_id"])

    def handle_unlisten(self, worker, listener_id):
        lib.pc_dispatch_worker_unlisten(self.dispatch, worker.id, listener_id)
        for server in self.servers.values():
            if server.id == listener_id:
                server.workers.discard(worker.id)

    def redistribute(self, payload, fds):
        """A connection read back from a dead or leaving worker goes to another one."""
        listener_id, addr_len = struct.unpack_from("=II", payload)
        addr = ffi.from_buffer(payload[8:8 + addr_len] or b"\0")
        for fd in fds:
            rc = lib.pc_dispatch_hand_off(self.dispatch, listener_id, fd, addr, min(addr_len, len(payload) - 8))
            if rc < 0 and rc != EAGAIN:  # on EAGAIN the loop keeps it and sends it later
                os.close(fd)

    def on_disconnect(self, worker):
        if worker._disconnected:
            return
        worker._disconnected = True
        self.stop_feeding(worker)
        worker.emit("disconnect")
        self.emit("disconnect", worker)

    def on_exit(self, worker):
        try:
            _, status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            status = 0
        if worker.process is not None and hasattr(worker.process, "returncode"):
            worker.process.returncode = os.waitstatus_to_exitcode(status) if status else 0
        if os.WIFSIGNALED(status):
            worker.signal_code = signal.Signals(os.WTERMSIG(status)).name
        else:
            worker.exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
        self.unwatch(worker._pidfd, worker._pidfd_token)
        os.close(worker._pidfd)
        # Messages it sent before dying are delivered before 'exit' (Node's order).
        self.on_worker_readable(worker)
        self.on_disconnect(worker)
        self.reclaim(worker)
        worker.state = "dead"
        del self.workers[worker.id]
        for server in self.servers.values():
            server.workers.discard(worker.id)
        self.free_slots.append(worker._slot.index)
        worker._slot.clear()
        code = worker.exit_code
        worker.emit("exit", code, worker.signal_code)
        self.emit("exit", worker, code, worker.signal_code)

    def reclaim(self, worker):
        """Read back the connections queued to a dead worker and hand them on."""
        lib.pc_dispatch_remove_worker(self.dispatch, worker.id)
        leftover = Channel(worker._worker_end)
        self.read_connections(leftover)       # queued to it, never accepted
        self.read_connections(worker._conns)  # ones it handed back
        leftover.close()
        worker._conns.close()
        if not worker._channel.closed:
            self.unwatch(worker._channel.fd, worker._channel_token)
            worker._channel.close()

    # -- the loop ----------------------------------------------------------------
    def run(self, idle_timeout=None):
        dispatch = self.ensure_dispatch()
        events = self.events
        self.stop_requested = False
        while self.workers and not self.stop_requested:
            wait = 1_000_000_000 if self.kill_deadline else -1
            n = lib.pc_dispatch_run(dispatch, wait, events, 64)
            if n == EINTR:
                continue  # Python signal handlers ran on the way here
            if n < 0:
                raise os_error(n, "dispatch loop")
            for i in range(n):
                kind, ident = events[i].kind, events[i].id
                if kind == lib.PC_EVENT_FD:
                    callback = self.tokens.get(ident)
                    if callback:
                        callback()
                else:
                    worker = self.workers.get(ident)
                    if worker is None:
                        continue
                    if kind == lib.PC_EVENT_WORKER_READABLE:
                        self.read_connections(worker._conns)
            if self.kill_deadline is not None and _monotonic() >= self.kill_deadline:
                for worker in list(self.workers.values()):
                    worker.kill("SIGKILL")
                self.kill_deadline = None

    def disconnect(self):
        for worker in list(self.workers.values()):
            worker.disconnect()

    def shutdown(self, timeout=None):
        """Stop accepting, disconnect every worker, SIGKILL those left after timeout."""
        for server in list(self.servers.values()):
            if self.dispatch is not None and self.policy in _PRIMARY_ACCEPTS:
                lib.pc_dispatch_remove_listener(self.dispatch, server.id)
        self.disconnect()
        if timeout is not None:
            self.kill_deadline = _monotonic() + max(0.0, float(timeout))
        if not self.workers:
            self.stop_requested = True
        # Once every worker has exited, run() returns.

    def close_servers(self):
        for server in self.servers.values():
            server.sock.close()
        self.servers.clear()


def check_rc(rc, what):
    if rc < 0:
        raise os_error(rc, what)
    return rc


_monotonic = time.monotonic


def _rerun_main():
    """Run the program's main module again, as a worker (Node's cluster.fork)."""
    import runpy
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        runpy.run_module(spec.name, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")


# ---- worker side ----------------------------------------------------------------

def _step_quietly(loop, coro):
    """Run a coroutine to its end from the loop's callbacks, as a Task would, without a
    Task's bookkeeping: about 5 µs less per connection started under uvloop. The
    futures it awaits keep it alive. Its result and errors are dropped: for
    connect_accepted_socket an error is a client gone before its protocol started."""
    try:
        awaited = coro.send(None)
    except Exception:  # noqa: BLE001 - StopIteration (done) included
        return
    if awaited is None:  # a bare yield: asyncio.sleep(0)
        loop.call_soon(_step_quietly, loop, coro)
    else:
        awaited.add_done_callback(lambda _: _step_quietly(loop, coro))


class Listener:
    """What ``cluster.listen()`` returns in a worker: connections for one address.

    Under rr/least/sticky they come from the primary over the worker's connection
    channel and are read only when accepted, so connections a busy worker has not
    taken stay in that channel (and go to another worker if this one dies). Under
    none/reuseport this wraps a listening socket the worker accepts on itself."""

    def __init__(self, owner, address, listener_id=None, sock=None):
        self._owner = owner
        self.address = address
        self.listener_id = listener_id
        self._sock = sock
        self.family = (socket.AF_UNIX if isinstance(address, str)
                       else socket.AF_INET6 if len(address) == 4 else socket.AF_INET)
        # (socket, raw sockaddr): connections read off the channel and not yet accepted
        self._queue = collections.deque()
        # Wakes accept() when a connection lands in _queue or the listener closes.
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if sock is None else None
        self.closed = False
        self._on_close = set()  # each ends a running serve()

    def __repr__(self):
        return f"<Listener {format_address(self.address)}>"

    def fileno(self):
        """Readable when a connection may be waiting (for select/selectors/asyncio)."""
        if self.closed:
            raise ValueError("operation on a closed Listener")
        return self._sock.fileno() if self._sock is not None else self._owner.conn_fd

    def _deliver(self, sock, sockaddr):
        """A connection for this listener that another one's accept read."""
        self._queue.append((sock, sockaddr))
        os.eventfd_write(self._wake, 1)

    def _poll(self, most=1):
        """(socket, raw sockaddr) of a waiting connection, or None, without blocking.
        most: how many the channel read may take; the caller serves them all now."""
        if self.closed:
            raise ValueError("the Listener is closed")
        if self._queue:
            return self._queue.popleft()
        return self._owner.next_connection(self, most)

    def _wait_fds(self):
        return [self._owner.conn_fd, self._wake]

    def _wait(self, timeout):
        if self._wake in select.select(self._wait_fds(), [], [], timeout)[0]:
            self._drain_wake()

    def _drain_wake(self):
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass

    def accept(self, timeout=None):
        """Block until a connection arrives: returns (socket, address)."""
        if self.closed:
            raise ValueError("accept() on a closed Listener")
        if self._sock is not None:
            # The socket stays non-blocking: under `none` every worker shares its open
            # file description, so toggling the flag here would change it for all.
            deadline = None if timeout is None else _monotonic() + timeout
            while True:
                try:
                    conn, peer = self._sock.accept()
                    conn.setblocking(True)
                    return self._owner.track(conn), peer
                except BlockingIOError:
                    pass
                left = None if deadline is None else max(0.0, deadline - _monotonic())
                if left == 0.0:
                    raise TimeoutError(f"no connection on {self!r} within {timeout} s")
                select.select([self._sock], [], [], left)
                if self.closed:
                    raise ValueError("the Listener was closed")
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            got = self._poll()
            if got is not None:
                got[0].setblocking(True)  # as socket.accept() returns it; the primary's is non-blocking
                return got[0], _decode_peer(got[1])
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            if left == 0.0:
                raise TimeoutError(f"no connection on {self!r} within {timeout} s")
            self._wait(left)

    def __iter__(self):
        while not self.closed:
            try:
                yield self.accept()
            except ValueError:
                if self.closed:
                    return
                raise

    async def accept_async(self):
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            conn, peer = await loop.sock_accept(self._sock)
            return self._owner.track(conn), peer
        wake = asyncio.Event()
        fds = self._wait_fds()
        for fd in fds:
            loop.add_reader(fd, wake.set)
        try:
            while True:
                got = self._poll()
                if got is not None:
                    got[0].setblocking(False)  # the flag is already off; the object learns it
                    return got[0], _decode_peer(got[1])
                wake.clear()
                await wake.wait()
                self._drain_wake()
        finally:
            for fd in fds:
                loop.remove_reader(fd)

    async def serve(self, protocol_factory, batch=None):
        """Serve every connection with an asyncio protocol until the listener closes.
        batch: connections taken per channel read (default 8). Several event loops may
        serve one listener at once; each takes connections only while it runs."""
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()  # resolved by close(), from whichever thread

        def on_close():
            loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(None))
        self._on_close.add(on_close)
        try:
            if self._sock is not None:
                await self._serve_own_socket(loop, protocol_factory, stopped)
            else:
                await self._serve_channel(loop, protocol_factory, stopped, batch or _SERVE_BATCH)
        finally:
            self._on_close.discard(on_close)

    async def _serve_own_socket(self, loop, protocol_factory, stopped):
        # The worker accepts itself (none/reuseport): the loop's own server does it in
        # C under uvloop. Its connections are not tracked one by one; servers that
        # serve() publish their own counts (pyclusterc run's ASGI beat does). The
        # server gets a dup of the socket, which it closes: several loops may serve.
        server = await loop.create_server(protocol_factory, sock=self._sock.dup())
        try:
            if not self.closed:
                await stopped
        finally:
            server.close()

    async def _serve_channel(self, loop, protocol_factory, stopped, batch):
        # A reader callback, not a task that awaits each connection: one batch read off
        # the channel (one recvmmsg, one scoreboard update) starts every connection in
        # it within the same loop pass. Readers stay registered: no epoll_ctl per
        # connection. The peer address is never decoded.
        def start_batch():
            self._drain_wake()
            try:
                # What is queued, then at most one channel read per pass: the loop serves
                # the connections it has before taking more (level-triggered readers
                # call back while the channel holds any).
                got = self._poll(batch)
                while got is not None:
                    _step_quietly(loop, loop.connect_accepted_socket(protocol_factory, got[0]))
                    got = self._queue.popleft() if self._queue else None
            except (ValueError, OSError) as exc:  # closed listener, or a broken channel
                if not stopped.done():
                    if self.closed:
                        stopped.set_result(None)
                    else:
                        stopped.set_exception(exc)

        fds = self._wait_fds()
        for fd in fds:
            loop.add_reader(fd, start_batch)
        try:
            if not self.closed:
                start_batch()  # connections queued before the readers were added
                await stopped
        finally:
            for fd in fds:
                loop.remove_reader(fd)

    def close(self):
        if self.closed:
            return
        self.closed = True
        for on_close in list(self._on_close):  # running serve() calls end
            on_close()
        if self._sock is not None:
            self._sock.close()
            return
        self._owner.unlisten(self)
        while self._queue:
            sock, sockaddr = self._queue.popleft()
            self._owner.return_connection(sock, self.listener_id, sockaddr)
        os.eventfd_write(self._wake, 1)  # wake accept() calls; the fd closes with the object

    def __del__(self):
        if self._wake is not None:
            os.close(self._wake)
            self._wake = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _WorkerSelf(EventEmitter):
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
        self._slot = slot
        self._policy = policy
        self._listeners = {}
        self._pending = {}
        self._next_req = 1
        self._disconnected = threading.Event()
        self._early_messages = []
        self._early_lock = threading.RLock()
        self._reader = threading.Thread(target=self._read_loop, name="pyclusterc-channel", daemon=True)
        self._reader.start()
        channel.send_object({"cmd": "online"}, KIND_CONTROL)

    def on(self, event, callback):
        super().on(event, callback)
        if event == "message":
            self._deliver_early()
        return self

    def once(self, event, callback):
        super().once(event, callback)
        if event == "message":
            self._deliver_early()
        return self

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
        os.kill(os.getpid(), _signal_number(signal_name))

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
        self.emit("disconnect")

    def wait_until_disconnected_if_listening(self):
        if self._listeners:
            self._disconnected.wait()

    def track(self, sock):
        """A connection the worker accepted itself (none/reuseport): count it open now
        and closed when it is closed, like the ones the primary hands over."""
        if self._slot is None:
            return sock
        timeout = sock.gettimeout()
        tracked = _TrackedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        tracked.settimeout(timeout)
        tracked._slot = self._slot
        self._slot.connection_opened()
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
            queue = listener._queue
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
        if self._slot is not None:
            self._slot.connections_received(count)
        fds = self._conn_fds
        for i, (listener_id, addr_len, addr) in enumerate(
                _CONN_MSG.iter_unpack(self._conn_bytes[:count * _CONN_MSG.size])):
            owner = self._listeners.get(listener_id)
            family = reader.family if owner is None else owner.family
            # Family, type and proto given: the socket need not probe the fd (3 syscalls).
            sock = _TrackedSocket(family, socket.SOCK_STREAM, 0, fileno=fds[i])
            sock._slot = self._slot
            if owner is None or owner.closed:
                self.return_connection(sock, listener_id, addr[:addr_len])
            elif owner is reader:
                owner._queue.append((sock, addr[:addr_len]))
            else:
                owner._deliver(sock, addr[:addr_len])

    def return_connection(self, sock, listener_id, sockaddr=b""):
        """A connection that reached a closed listener goes back to the primary."""
        try:
            self._conns.send_bytes(_CONN_MSG.pack(listener_id, len(sockaddr), sockaddr), KIND_CONN,
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
                if message["ok"] and message["policy"] in _PRIMARY_ACCEPTS:
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


# ---- the module object: node:cluster's properties --------------------------------

class _ClusterModule(types.ModuleType):
    @property
    def is_worker(self):
        return isinstance(self._state, _WorkerSelf)

    @property
    def is_primary(self):
        return not self.is_worker

    is_master = is_primary

    @property
    def worker(self):
        return self._state if self.is_worker else None

    @property
    def workers(self):
        return dict(self._state.workers) if self.is_primary else {}

    @property
    def settings(self):
        return dict(self._state.settings) if self.is_primary else {}

    @property
    def scheduling_policy(self):
        return self._state.policy if self.is_primary else self._state._policy

    @scheduling_policy.setter
    def scheduling_policy(self, name):
        if self.is_worker:
            raise RuntimeError("scheduling_policy is set in the primary")
        if self._state.dispatch is not None:
            raise RuntimeError("set scheduling_policy before the first fork()")
        self._state.policy = _check_policy(name)

    def _primary(self, what):
        if self.is_worker:
            raise RuntimeError(f"cluster.{what}() is only available in the primary; this is worker {self._state.id}")
        return self._state

    def setup_primary(self, **settings):
        """exec (script path or argv list), args, cwd, fork (bool: fork this process
        instead of starting the script again), target (callable run by forked workers),
        scheduling_policy."""
        state = self._primary("setup_primary")
        known = {"exec", "args", "cwd", "fork", "target", "scheduling_policy", "silent"}
        unknown = set(settings) - known
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(known))}")
        if "scheduling_policy" in settings:
            self.scheduling_policy = settings.pop("scheduling_policy")
        state.settings.update(settings)
        state.emit("setup", dict(state.settings))

    setup_master = setup_primary

    def fork(self, env=None):
        return self._primary("fork").fork(env)

    def run(self):
        return self._primary("run").run()

    def shutdown(self, timeout=None):
        if timeout is not None:
            timeout_ns(timeout, "shutdown timeout")
        return self._primary("shutdown").shutdown(timeout)

    def disconnect(self, callback=None):
        if self.is_worker:
            return self._state.disconnect()
        state = self._state
        if callback is not None:
            remaining = set(state.workers)
            if not remaining:
                callback()

            def one_gone(worker, *args):
                remaining.discard(worker.id)
                if not remaining:
                    state.off("exit", one_gone)
                    callback()
            state.on("exit", one_gone)
        state.disconnect()

    def listen(self, address, backlog=511):
        """In a worker: a Listener the primary feeds. In the primary: a plain
        listening socket wrapped as a Listener (Node lets the primary listen too)."""
        if self.is_worker:
            return self._state.listen(address, backlog)
        family, sockaddr = parse_address(address)
        sock = bind_listener(family, sockaddr, backlog)
        return Listener(_PrimaryOwner, sock.getsockname(), sock=sock)

    def on(self, event, callback):
        self._state.on(event, callback)
        return self

    def once(self, event, callback):
        self._state.once(event, callback)
        return self

    def off(self, event, callback):
        self._state.off(event, callback)
        return self

    def _become_worker(self):
        """Set this process up as a worker from the PYCLUSTERC_* environment."""
        worker_id = int(os.environ[_ENV_ID])
        channel_fd = int(os.environ.pop(_ENV_CHANNEL))
        conn_fd = int(os.environ.pop(_ENV_CONNS))
        primary_pid = int(os.environ.get(_ENV_PRIMARY, "0"))
        policy = os.environ.get(_ENV_POLICY, "rr")
        # Die with the primary; a primary already gone means exit now.
        if primary_pid and lib.pc_die_with_parent(signal.SIGKILL, primary_pid) < 0:
            os._exit(1)
        slot = None
        board_fd = os.environ.pop(_ENV_SCOREBOARD, None)
        if board_fd is not None:
            board = SharedBuffer._from_fd(int(board_fd))
            slot = ScoreSlot(board, int(os.environ.pop(_ENV_SLOT)))
        self._state = _WorkerSelf(worker_id, Channel(channel_fd), Channel(conn_fd), slot, policy)


class _PrimaryOwner:
    """Listener owner for a socket the primary listens on itself."""

    @staticmethod
    def track(sock):
        return sock


_module = sys.modules[__name__]
_module.__class__ = _ClusterModule
_module._state = _Primary(_module)
if _ENV_ID in os.environ and _ENV_CHANNEL in os.environ and _ENV_CONNS in os.environ:
    _module._become_worker()
