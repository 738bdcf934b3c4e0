"""The primary side of node:cluster: worker handles, forking, the listening sockets, and
the loop that runs it all.

    fork() ──► channel pair ×2 + scoreboard slot + pidfd ──► Worker handle
    run():  pc_dispatch_run (C, GIL released: accept4 → policy → sendmmsg SCM_RIGHTS)
              └─► events: a watched fd is readable (worker messages, pidfd exit, the
                  manager's own fds) │ a worker's connection channel has connections
                  handed back │ a timer (call_later) is due
            each event runs its callback here; an exception in one is reported and
            the loop goes on.
"""
import heapq
import os
import socket
import struct
import sys
import time

from .._lowlevel.events import EventEmitter
from .._lowlevel.process import decode_wait_status, run_child
from .._lowlevel.native import EAGAIN, EINTR, check, ffi, lib, os_error
from ..ipc.channel import KIND_CONN, KIND_CONTROL, KIND_DATA, Channel, ChannelClosed, loads
from ..shared.buffer import SharedBuffer
from .addresses import (ENV_CHANNEL, ENV_CONNS, ENV_ID, ENV_POLICY, ENV_PRIMARY, ENV_SCOREBOARD,
                        ENV_SLOT, PRIMARY_ACCEPTS, bind_listener, check_policy, format_address,
                        signal_number)
from .scoreboard import MAX_SLOTS, SLOT_BYTES, U32_PID, ScoreSlot


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
        self.ready_sources = set()   # "app", "server": see WorkerSelf.ready
        self.feeding = False         # the dispatch loop may hand it connections
        self.held_listeners = []     # listened on, not fed yet (setup_primary(feed_after_ready=True))
        self._channel = channel            # messages
        self._conns = conns                # the loop sends connections on this one
        self._worker_end = worker_conn_end  # kept so queued connections survive a crash
        self.slot = slot
        self._pidfd = None
        self._conns_token = None           # watching _conns while it drains
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
        """Signal the worker (name or number). As in Node 20 (its own tests pin it, its
        documentation says otherwise), this leaves exited_after_disconnect false."""
        signum = signal_number(signal_name)
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
            return self
        self.state = "disconnecting"
        self._state_owner.stop_feeding(self)
        try:
            self._channel.send_object({"cmd": "disconnect"}, KIND_CONTROL)
        except ChannelClosed:
            pass
        return self

    def is_connected(self):
        return not self._disconnected and not self.is_dead()

    def is_dead(self):
        return self.exit_code is not None or self.signal_code is not None

    def score(self):
        return self.slot.snapshot() if self.slot else {}

    def heartbeat_ns(self):
        """When its loop last stamped the scoreboard (time.monotonic_ns()), 0 if never."""
        return self.slot.heartbeat_ns() if self.slot else 0

    def start_feeding(self):
        """With setup_primary(feed_after_ready=True): the worker is ready, the dispatch
        loop may hand it connections (until then they go to the others or wait)."""
        self._state_owner.start_feeding(self)


class _Server:
    """A listening socket the primary owns for one address, shared by workers."""

    def __init__(self, listener_id, sock, address):
        self.id = listener_id
        self.sock = sock
        self.address = address
        self.workers = set()


class Primary(EventEmitter):
    def __init__(self, module, become_worker):
        super().__init__()
        self.module = module
        self.become_worker = become_worker  # turns this (forked) process into a worker
        self.workers = {}
        self.settings = {}
        self.settings_set = False     # setup_primary() was called
        self.next_id = 1
        self.next_listener = 1
        self.policy = check_policy(os.environ.get(ENV_POLICY, "rr"))
        self.dispatch = None
        self.servers = {}             # address key -> _Server
        self.tokens = {}              # watched fd token -> (fd, callback)
        self.timers = Timers()
        self.next_token = 1
        self.scoreboard = None
        self.free_slots = list(range(MAX_SLOTS - 1, -1, -1))
        self.stop_requested = False
        self.kill_deadline = None
        self.events = ffi.new("struct pc_event[64]")

    # -- setup -------------------------------------------------------------------
    def ensure_dispatch(self):
        if self.dispatch is None:
            err = ffi.new("int *")
            sched = PRIMARY_ACCEPTS.get(self.policy, lib.PC_SCHED_RR)
            d = lib.pc_dispatch_new(sched, err)
            if d == ffi.NULL:
                raise os_error(err[0], "cannot create the dispatch loop")
            self.dispatch = ffi.gc(d, lib.pc_dispatch_free)
            self.scoreboard = SharedBuffer(SLOT_BYTES * MAX_SLOTS)
            # The dispatch loop reads the slots (least): a C view of the same memory.
            self.scoreboard_view = ffi.from_buffer(self.scoreboard)
            self.slots = ffi.cast("struct pc_score_slot *", self.scoreboard_view)
        return self.dispatch

    def watch(self, fd, callback):
        """Call callback() from the loop whenever fd is readable; returns a token for
        unwatch(). Level-triggered: the callback must read what is there."""
        token = self.next_token
        self.next_token += 1
        rc = lib.pc_dispatch_watch(self.ensure_dispatch(), fd, token)
        if rc < 0:
            raise os_error(rc, f"cannot watch fd {fd}")
        self.tokens[token] = (fd, callback)
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
        child_env.update({ENV_ID: str(worker_id), ENV_CHANNEL: str(worker_end),
                          ENV_CONNS: str(conn_worker_end),
                          ENV_PRIMARY: str(os.getpid()), ENV_POLICY: self.policy,
                          ENV_SCOREBOARD: str(board_fd), ENV_SLOT: str(slot_index)})
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
        slot.u32.store(U32_PID, pid)
        worker = Worker(self, worker_id, pid, process, Channel(primary_end), Channel(conn_primary_end),
                        conn_worker_end, slot)
        self.workers[worker_id] = worker
        worker._channel_token = self.watch(primary_end, lambda w=worker: self.on_worker_readable(w))
        check(lib.pc_dispatch_add_worker(dispatch, worker_id, conn_primary_end,
                                            self.slots + slot_index),
                 f"worker {worker_id}")
        worker._pidfd = os.pidfd_open(pid)
        worker._pidfd_token = self.watch(worker._pidfd, lambda w=worker: self.on_exit(w))
        self.emit("fork", worker)
        return worker

    def _spawn(self, pass_fds, env):
        import subprocess
        argv = self.settings.get("exec")
        if argv is None:
            # This program again: its interpreter options and script (or -m module),
            # with setup_primary(args=...) in place of its own arguments if given.
            own = sys.orig_argv[:len(sys.orig_argv) - (len(sys.argv) - 1)]
            argv = [sys.executable, *own[1:], *self.settings.get("args", sys.argv[1:])]
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
        def become_worker_and_run():
            for fd in primary_ends:
                os.close(fd)
            for other in self.workers.values():
                other._channel.close()
                other._conns.close()
                os.close(other._worker_end)
            for server in self.servers.values():
                server.sock.close()
            os.environ.update(env)
            if "args" in self.settings:  # as a spawned worker would see them
                sys.argv[1:] = [str(arg) for arg in self.settings["args"]]
            self.become_worker()
            if target is not None:
                target()
            else:
                rerun_main()
            if self.module.is_worker:
                self.module.worker.wait_until_disconnected_if_listening()
            return 0
        run_child(become_worker_and_run)

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

    def bind(self, family, sockaddr, backlog):
        """Listen on an address now (so "address in use" is raised here, once);
        returns the address workers will get (the real port for port 0)."""
        server = self.server_for(family, sockaddr, backlog)
        actual = server.address if family == socket.AF_UNIX else tuple(server.address[:2])
        self.servers.setdefault((family, actual), server)
        return actual

    def adopt(self, sock):
        """Register an inherited listening socket (fd://N, systemd); returns its address."""
        name = sock.getsockname()
        sockaddr = name if sock.family == socket.AF_UNIX else tuple(name[:2])
        self.add_server((sock.family, sockaddr), sock, sockaddr)
        return sockaddr

    def add_server(self, key, sock, address):
        """Register a listening socket (bound here, inherited, or from systemd) under
        key = (family, sockaddr), the address workers will ask to listen on."""
        server = _Server(self.next_listener, sock, address)
        self.next_listener += 1
        self.servers[key] = server
        if self.policy in PRIMARY_ACCEPTS:
            check(lib.pc_dispatch_add_listener(self.ensure_dispatch(), server.id, sock.fileno()),
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
            if self.policy in PRIMARY_ACCEPTS:
                worker.held_listeners.append(server.id)
                if worker.feeding or not self.settings.get("feed_after_ready"):
                    worker.start_feeding()
            elif self.policy == "none":
                reply["socket"] = server.sock  # travels by fd: the worker accepts on it
            server.workers.add(worker.id)
        worker._channel.send_object(reply, KIND_CONTROL)
        # Under reuseport the worker binds its own socket after this reply: it is
        # listening only once it says so ("bound"), not yet.
        if reply["ok"] and self.policy != "reuseport":
            self.on_listening(worker, server.address)

    def on_listening(self, worker, address):
        worker.listening.append(address)
        worker.state = "listening"
        worker.emit("listening", address)
        self.emit("listening", worker, address)

    def start_feeding(self, worker):
        """Connections for the addresses it listens on may go to this worker now."""
        if worker.is_dead() or worker._disconnected:
            return
        worker.feeding = True
        held, worker.held_listeners = worker.held_listeners, []
        for listener_id in held:
            check(lib.pc_dispatch_worker_listen(self.dispatch, worker.id, listener_id), f"worker {worker.id}")

    def stop_feeding(self, worker):
        """No new connections go to this worker (it is disconnecting). Connections it
        hands back while it drains (Listener.hand_back, or queued ones its listeners
        return) are read here at once and passed to the others."""
        worker.feeding = False
        if self.dispatch is not None:
            lib.pc_dispatch_remove_worker(self.dispatch, worker.id)
        if worker._conns_token is None and not worker._conns.closed and not worker.is_dead():
            worker._conns_token = self.watch(worker._conns.fd, lambda: self.read_handed_back(worker))

    # -- events ------------------------------------------------------------------
    def on_worker_readable(self, worker):
        """Messages and control requests from a worker (its message channel)."""
        while not worker._channel.closed:
            try:
                message = worker._channel.receive()
            except ChannelClosed:
                self.unwatch(worker._channel_token)
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
        """Connections read back from a worker's connection channel go to others.
        False once the channel is at its end (the worker's side is closed)."""
        while True:
            try:
                message = channel.receive()
            except (ChannelClosed, OSError):
                return False
            if message is None:
                return True
            kind, payload, fds = message
            if kind == KIND_CONN:
                self.redistribute(payload, fds)
            else:
                for fd in fds:
                    os.close(fd)

    def read_handed_back(self, worker):
        if not self.read_connections(worker._conns) and worker._conns_token is not None:
            self.unwatch(worker._conns_token)  # at EOF: the exit's reclaim reads the rest
            worker._conns_token = None

    def unwatch(self, token):
        entry = self.tokens.pop(token, None)
        if entry is not None:
            lib.pc_dispatch_unwatch(self.dispatch, entry[0])

    def on_control(self, worker, request):
        cmd = request.get("cmd")
        if cmd == "online":
            worker.state = "online"
            worker.emit("online")
            self.emit("online", worker)
        elif cmd == "listen":
            self.handle_listen(worker, request)
        elif cmd == "ready":
            # "app": pyclusterc.ready() (wait_ready); "server": the app has started.
            source = request.get("source", "app")
            worker.ready_sources.add(source)
            worker.emit("ready", source)
            self.emit("ready", worker, source)
        elif cmd == "disconnected":  # the worker disconnected itself (or kill()ed itself)
            worker.exited_after_disconnect = True
            self.on_disconnect(worker)
        elif cmd == "bound":
            self.on_listening(worker, request["address"])
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
        if not worker.is_dead():
            worker.state = "disconnected"
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
        code, signal_name = decode_wait_status(status)
        if signal_name is not None:
            worker.signal_code = signal_name
        else:
            worker.exit_code = code
        self.unwatch(worker._pidfd_token)
        os.close(worker._pidfd)
        # Messages it sent before dying are delivered before 'exit' (Node's order).
        self.on_worker_readable(worker)
        self.on_disconnect(worker)
        self.reclaim(worker)
        worker.state = "dead"
        del self.workers[worker.id]
        for server in self.servers.values():
            server.workers.discard(worker.id)
        self.free_slots.append(worker.slot.index)
        worker.slot.clear()
        code = worker.exit_code
        worker.emit("exit", code, worker.signal_code)
        self.emit("exit", worker, code, worker.signal_code)

    def reclaim(self, worker):
        """Read back the connections queued to a dead worker and hand them on."""
        lib.pc_dispatch_remove_worker(self.dispatch, worker.id)
        if worker._conns_token is not None:
            self.unwatch(worker._conns_token)
            worker._conns_token = None
        leftover = Channel(worker._worker_end)
        self.read_connections(leftover)       # queued to it, never accepted
        self.read_connections(worker._conns)  # ones it handed back
        leftover.close()
        worker._conns.close()
        if not worker._channel.closed:
            self.unwatch(worker._channel_token)
            worker._channel.close()

    # -- the loop ----------------------------------------------------------------
    def run(self):
        """Until no worker is left (and no keep-alive timer is pending) or stop()."""
        dispatch = self.ensure_dispatch()
        events = self.events
        self.stop_requested = False
        while (self.workers or self.timers.keep_alive) and not self.stop_requested:
            wait = self.timers.wait_ns()
            if self.kill_deadline is not None:
                left = max(0, int((self.kill_deadline - time.monotonic()) * 1e9))
                wait = left if wait < 0 else min(wait, left)
            n = lib.pc_dispatch_run(dispatch, wait, events, 64)
            if n == EINTR:
                continue  # Python signal handlers ran on the way here
            if n < 0:
                raise os_error(n, "dispatch loop")
            for i in range(n):
                kind, ident = events[i].kind, events[i].id
                if kind == lib.PC_EVENT_FD:
                    entry = self.tokens.get(ident)
                    if entry:
                        self.guarded(entry[1], "a watched fd's callback")
                else:
                    worker = self.workers.get(ident)
                    if worker is not None and kind == lib.PC_EVENT_WORKER_READABLE:
                        self.guarded(lambda: self.read_connections(worker._conns),
                                     f"worker {worker.id}'s handed-back connections")
            for callback in self.timers.due():
                self.guarded(callback, "a timer")
            if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
                for worker in list(self.workers.values()):
                    worker.kill("SIGKILL")
                self.kill_deadline = None

    def guarded(self, callback, what):
        """Run one callback of the loop: an exception is reported (once, with what it
        was) and the loop goes on — one bad callback must not end every worker."""
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 - reported through the 'error' event
            if self.listener_count("error"):
                self.emit("error", exc, what)
            else:
                import traceback
                sys.stderr.write(f"pyclusterc: error in {what} (the primary goes on):\n"
                                 + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                sys.stderr.flush()

    def call_later(self, delay, callback, keep_alive=False):
        """Run callback() from the loop after delay seconds; returns a handle with
        cancel(). keep_alive: run() does not return while this timer is pending."""
        self.ensure_dispatch()
        return self.timers.add(delay, callback, keep_alive)

    def disconnect(self):
        for worker in list(self.workers.values()):
            worker.disconnect()

    def shutdown(self, timeout=None):
        """Stop accepting, disconnect every worker, SIGKILL those left after timeout."""
        for server in list(self.servers.values()):
            if self.dispatch is not None and self.policy in PRIMARY_ACCEPTS:
                lib.pc_dispatch_remove_listener(self.dispatch, server.id)
        self.disconnect()
        if timeout is not None:
            self.kill_deadline = time.monotonic() + max(0.0, float(timeout))
        if not self.workers:
            self.stop_requested = True
        # Once every worker has exited, run() returns.

    def close_servers(self):
        for server in self.servers.values():
            server.sock.close()
        self.servers.clear()


def rerun_main():
    """Run the program's main module again, as a worker (Node's cluster.fork)."""
    import runpy
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        runpy.run_module(spec.name, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")


class Timer:
    __slots__ = ("when", "callback", "keep_alive", "cancelled", "_timers")

    def __init__(self, timers, when, callback, keep_alive):
        self._timers, self.when, self.callback = timers, when, callback
        self.keep_alive, self.cancelled = keep_alive, False

    def cancel(self):
        if not self.cancelled:
            self.cancelled = True
            if self.keep_alive:
                self._timers.keep_alive -= 1


class Timers:
    """One-shot timers for the primary's loop (a heap; the loop sleeps until the first)."""

    def __init__(self):
        self.heap = []
        self.sequence = 0
        self.keep_alive = 0   # pending timers that keep run() going

    def add(self, delay, callback, keep_alive):
        timer = Timer(self, time.monotonic() + max(0.0, float(delay)), callback, keep_alive)
        self.sequence += 1
        heapq.heappush(self.heap, (timer.when, self.sequence, timer))
        self.keep_alive += keep_alive
        return timer

    def wait_ns(self):
        """How long the loop may sleep: until the first timer, or -1 (no timer)."""
        while self.heap and self.heap[0][2].cancelled:
            heapq.heappop(self.heap)
        if not self.heap:
            return -1
        return max(0, int((self.heap[0][0] - time.monotonic()) * 1e9))

    def due(self):
        """Pop the timers that are due; returns their callbacks, in deadline order."""
        now = time.monotonic()
        callbacks = []
        while self.heap and self.heap[0][0] <= now:
            timer = heapq.heappop(self.heap)[2]
            if not timer.cancelled:
                timer.cancel()  # fired: no longer pending
                callbacks.append(timer.callback)
        return callbacks
