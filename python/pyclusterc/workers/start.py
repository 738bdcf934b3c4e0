"""Start methods that begin in a fresh interpreter: ``spawn`` (posix_spawn of
``python -c``) and ``forkserver`` (one fresh interpreter per parent that forks a child
per request). Either child runs ``boot()``:

    parent                                   fresh child
    send_plain(tid, env, limits, sys.path,   read it; apply env and limits; run the
               __main__'s path)  ------->      parent's script as __mp_main__ if needed
    send_plain(target, args)  ------------>  unpickle the target (an error says why)
    worker_data  ------------------------->  runtime.run_worker(...)

A forkserver request carries the worker's channel and ring fds and a pipe; the server
replies with the pid and later writes the child's wait status to the pipe.
"""
import os
import pickle
import runpy
import signal
import socket
import sys
import threading
import weakref

from .._lowlevel.native import lib
from .._lowlevel.process import run_child
from .._lowlevel.wakeup import WakeupPipe
from ..ipc.ring import DATA, ChannelClosed, Endpoint
from .ports import encode
from .runtime import EXIT_UNCAUGHT, apply_env_and_limits, read_worker_data, run_worker

__all__ = ["check_importable", "main_path", "send_plain", "spawn", "spawned_main",
           "forkserver_request", "forkserver_main"]


def check_importable(target, start_method):
    if not callable(target):
        return     # a .py path or 'module:function' is resolved in the worker
    how = (f"Worker target {getattr(target, '__qualname__', target)!r} cannot start with "
           f"start_method={start_method!r}: it must be importable (a top-level function, "
           f"'module:function' or a .py path)")
    try:
        pickle.dumps(target)
    except Exception:  # noqa: BLE001  (lambdas, nested functions, bound local objects)
        raise ValueError(how) from None
    if getattr(target, "__module__", None) == "__main__" and main_path(target) is None:
        raise ValueError(how + "; __main__ has no file to import it from")


def main_path(target):
    """The script to import as __main__ in a fresh interpreter when target lives there."""
    if getattr(target, "__module__", None) != "__main__":
        return None
    path = getattr(sys.modules["__main__"], "__file__", None)
    return os.path.abspath(path) if path else None


def send_plain(ep, obj):
    payload, fds, _ = encode(obj)
    ep.send(DATA, payload, fds)


def spawn(fds):
    """posix_spawn a fresh worker given its endpoint's fds; returns its pid."""
    # posix_spawn's dup2(fd, fd) clears close-on-exec in the child only, so no other
    # process started meanwhile inherits these fds.
    argv = [sys.executable, "-c", "from pyclusterc.workers.start import spawned_main; spawned_main()",
            *map(str, fds), str(os.getpid())]
    sys.stdout.flush()
    sys.stderr.flush()
    return os.posix_spawn(sys.executable, argv, os.environ,
                          file_actions=[(os.POSIX_SPAWN_DUP2, fd, fd) for fd in fds])


def spawned_main():
    """Entry point of a spawned worker: python -c ... SOCK_FD IN_FD OUT_FD PARENT_PID."""
    sock_fd, in_fd, out_fd, parent_pid = map(int, sys.argv[1:5])
    sys.argv = sys.argv[:1]
    boot(sock_fd, in_fd, out_fd, parent_pid)


def boot(sock_fd, in_fd, out_fd, parent_pid):
    """A fresh worker process (spawn or forkserver): read the spec, run the target, exit."""
    def body():
        lib.pc_die_with_parent(signal.SIGKILL, parent_pid)
        ep = Endpoint.adopt(sock_fd, in_fd, out_fd)
        tid, env, limits, path, script = read_worker_data(ep)
        sys.path[:] = path
        apply_env_and_limits(env, limits)
        if script:
            # As multiprocessing does: the parent's script runs as __mp_main__ (its
            # `if __name__ == "__main__"` block stays off) and stands in for __main__.
            module = type(sys)("__mp_main__")
            sys.modules["__main__"] = sys.modules["__mp_main__"] = module
            module.__dict__.update(runpy.run_path(script, run_name="__mp_main__"))
        try:
            target, args = read_worker_data(ep)
        except Exception as e:  # noqa: BLE001  (it could not be imported here: say so as 'error')
            target, args = _raiser(e), ()
        return run_worker(ep, target, args, read_worker_data(ep), tid)
    run_child(body, EXIT_UNCAUGHT)


def _raiser(exc):
    def fail():
        raise exc
    return fail


class _ForkServer:
    """The forkserver of this process: a fresh interpreter with pyclusterc imported,
    forking one child per request. A request carries the worker's channel and ring fds
    and a pipe; the server replies with the pid and writes the wait status to the pipe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-c", "from pyclusterc.workers.start import forkserver_main; forkserver_main()",
                str(theirs.fileno()), str(os.getpid())]
        self.pid = os.posix_spawn(sys.executable, argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), theirs.fileno())])
        theirs.close()
        self._reap = weakref.finalize(self, _reap_server, self.sock, self.pid)

    def request(self, fds):
        with self.lock:
            socket.send_fds(self.sock, [b"w"], fds)
            data = b""
            while len(data) < 8:
                chunk = self.sock.recv(8 - len(data))
                if not chunk:
                    raise ChannelClosed("the forkserver is gone")
                data += chunk
            return int.from_bytes(data, "little", signed=True)


def _reap_server(sock, pid):
    sock.close()          # the server exits at EOF
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


_forkserver = None
_forkserver_lock = threading.Lock()


def _forget_forkserver():
    # In a forked child the parent's server socket is not ours: keeping it open would
    # also keep the server alive after the parent ends.
    global _forkserver
    if _forkserver is not None:
        _forkserver._reap.detach()
        _forkserver.sock.close()
        _forkserver = None


os.register_at_fork(after_in_child=_forget_forkserver)


def forkserver_request(fds):
    global _forkserver
    for attempt in (1, 2):
        with _forkserver_lock:
            if _forkserver is None:
                _forkserver = _ForkServer()
            server = _forkserver
        try:
            pid = server.request(fds)
        except (ChannelClosed, OSError):
            with _forkserver_lock:
                if _forkserver is server:
                    _forkserver = None         # it died: start another once
            if attempt == 2:
                raise
            continue
        if pid < 0:
            raise OSError(-pid, f"the forkserver could not fork: {os.strerror(-pid)}")
        return pid


def forkserver_main():
    """The forkserver's loop (see _ForkServer)."""
    import select
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    lib.pc_die_with_parent(signal.SIGKILL, int(sys.argv[2]))
    wakeup = WakeupPipe()
    signal.set_wakeup_fd(wakeup.write_fd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status_fds = {}       # child pid -> the pipe its wait status goes to
    poller = select.poll()
    poller.register(ctrl, select.POLLIN)
    poller.register(wakeup, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if wakeup.fileno() in events:
            wakeup.drain()
        while status_fds:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            fd = status_fds.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, status.to_bytes(4, "little", signed=True))
                except OSError:
                    pass
                os.close(fd)
        if ctrl.fileno() in events:
            msg, fds, _, _ = socket.recv_fds(ctrl, 16, 4)
            if not msg:
                os._exit(0)      # the parent is gone (its workers die with this process)
            try:
                pid = os.fork()
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                ctrl.sendall((-e.errno).to_bytes(8, "little", signed=True))
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                wakeup.close()
                for fd in (ctrl.fileno(), fds[3], *status_fds.values()):
                    os.close(fd)
                boot(fds[0], fds[1], fds[2], os.getppid())
            for fd in fds[:3]:
                os.close(fd)
            status_fds[pid] = fds[3]
            ctrl.sendall(pid.to_bytes(8, "little", signed=True))

