"""``node:cluster`` for Python: a primary forks workers that share server ports.

The primary accepts connections in C (csrc/dispatch.c, GIL released) and passes each
one to a worker over the worker's channel (SCM_RIGHTS). Python here handles the
lifecycle: forking, worker messages, exits, listen requests, shutdown.

- ``addresses``: address parsing, listening sockets, shared names (policies, environment).
- ``scoreboard``: the shared per-worker slots (heartbeat, counters).
- ``primary``: worker handles, fork, the dispatch loop with its timers and fd watches.
- ``worker``: ``cluster.worker`` in a worker; ``listener``: ``Listener``.
- this module: the module object with node:cluster's properties and functions.

Primary side: ``fork``, ``workers``, ``run``, ``shutdown``, ``disconnect``, events, and the
seams a process manager builds on: ``add_server``, ``watch_fd``/``unwatch_fd``,
``call_later``. Worker side: ``worker`` (itself), ``listen``, ``worker.send``.

May import: ``_lowlevel``, ``shared``, ``ipc``; never ``workers``, ``serve``, ``manager``, ``cli``.
"""
import os
import signal
import sys
import types

from .._lowlevel.native import lib, timeout_ns
from ..ipc.channel import Channel
from ..shared.buffer import SharedBuffer
from .addresses import (ENV_CHANNEL, ENV_CONNS, ENV_ID, ENV_POLICY, ENV_PRIMARY, ENV_SCOREBOARD,
                        ENV_SLOT, SCHEDULING_POLICIES, bind_listener, check_policy, format_address,
                        parse_address)
from .listener import Listener
from .primary import Primary, Worker  # noqa: F401  (Worker: the public handle type)
from .scoreboard import ScoreSlot
from .worker import WorkerSelf

__all__ = ["fork", "run", "shutdown", "disconnect", "setup_primary", "listen", "on", "once",
           "off", "Worker", "Listener", "SCHEDULING_POLICIES", "parse_address", "format_address"]


# ---- the module object: node:cluster's properties --------------------------------

class _ClusterModule(types.ModuleType):
    @property
    def is_worker(self):
        return isinstance(self._state, WorkerSelf)

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
        """The effective settings (Node's cluster.settings): after setup_primary() the
        defaults (exec, args, exec_argv, silent) with what was given over them."""
        if not self.is_primary:
            return {}
        if not self._state.settings_set:
            return dict(self._state.settings)
        own = sys.orig_argv[:len(sys.orig_argv) - (len(sys.argv) - 1)]
        options = own[1:-2] if len(own) >= 3 and own[-2] == "-m" else own[1:-1]
        return {"exec": sys.argv[0], "args": list(sys.argv[1:]), "exec_argv": options,
                "silent": False, **self._state.settings}

    @property
    def scheduling_policy(self):
        return self._state.policy if self.is_primary else self._state._policy

    @scheduling_policy.setter
    def scheduling_policy(self, name):
        if self.is_worker:
            raise RuntimeError("scheduling_policy is set in the primary")
        if self._state.dispatch is not None:
            raise RuntimeError("set scheduling_policy before the first fork()")
        self._state.policy = check_policy(name)

    def _primary(self, what):
        if self.is_worker:
            raise RuntimeError(f"cluster.{what}() is only available in the primary; this is worker {self._state.id}")
        return self._state

    def setup_primary(self, **settings):
        """exec (script path or argv list), args, cwd, fork (bool: fork this process
        instead of starting the script again), target (callable run by forked workers),
        scheduling_policy, feed_after_ready (bool: a worker gets connections only after
        Worker.start_feeding(), not as soon as it listens)."""
        state = self._primary("setup_primary")
        known = {"exec", "args", "cwd", "fork", "target", "scheduling_policy", "silent",
                 "feed_after_ready"}
        unknown = set(settings) - known
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(known))}")
        if "scheduling_policy" in settings:
            self.scheduling_policy = settings.pop("scheduling_policy")
        state.settings.update(settings)
        state.settings_set = True
        state.emit("setup", self.settings)

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
        return Listener(PrimaryOwner, sock.getsockname(), sock=sock)

    # -- seams for a process manager (primary only) ------------------------------------
    def bind(self, address, backlog=511):
        """Listen on address in the primary now (errors are raised here, once): workers'
        listen(address) share it. Returns the bound address (the real port for 0)."""
        family, sockaddr = parse_address(address, default_host="127.0.0.1")
        return family, self._primary("bind").bind(family, sockaddr, backlog)

    def adopt_socket(self, sock):
        """Serve an inherited listening socket (fd://N, systemd socket activation):
        workers' listen(its address) use it. Returns (family, address)."""
        return sock.family, self._primary("adopt_socket").adopt(sock)

    def watch_fd(self, fd, callback):
        """Call callback() from the primary's loop whenever fd is readable (level-
        triggered: read what is there). Returns a token for unwatch_fd()."""
        return self._primary("watch_fd").watch(fd, callback)

    def unwatch_fd(self, token):
        self._primary("unwatch_fd").unwatch(token)

    def call_later(self, delay, callback, keep_alive=False):
        """Run callback() from the primary's loop in delay seconds; returns a handle
        with cancel(). keep_alive=True: run() does not return while it is pending."""
        return self._primary("call_later").call_later(delay, callback, keep_alive)

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
        worker_id = int(os.environ[ENV_ID])
        channel_fd = int(os.environ.pop(ENV_CHANNEL))
        conn_fd = int(os.environ.pop(ENV_CONNS))
        primary_pid = int(os.environ.get(ENV_PRIMARY, "0"))
        policy = os.environ.get(ENV_POLICY, "rr")
        # Die with the primary; a primary already gone means exit now.
        if primary_pid and lib.pc_die_with_parent(signal.SIGKILL, primary_pid) < 0:
            os._exit(1)
        slot = None
        board_fd = os.environ.pop(ENV_SCOREBOARD, None)
        if board_fd is not None:
            board = SharedBuffer.from_fd(int(board_fd))
            slot = ScoreSlot(board, int(os.environ.pop(ENV_SLOT)))
        self._state = WorkerSelf(worker_id, Channel(channel_fd), Channel(conn_fd), slot, policy)


def ready():
    """In a worker: tell the primary this worker is ready (PM2's wait_ready: with
    --wait-ready a worker gets no connection before it calls this). Elsewhere: nothing."""
    if _module.is_worker:
        _module.worker.ready("app")


class PrimaryOwner:
    """Listener owner for a socket the primary listens on itself."""

    @staticmethod
    def track(sock):
        return sock


_module = sys.modules[__name__]
_module.__class__ = _ClusterModule
_module._state = Primary(_module, _module._become_worker)
if ENV_ID in os.environ and ENV_CHANNEL in os.environ and ENV_CONNS in os.environ:
    _module._become_worker()
