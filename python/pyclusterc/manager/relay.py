"""The output relay: each worker's stdout and stderr are pipes the primary reads on a
thread of its own, writing each line with the worker's label in front ("[2] started").

    fork(fork, label) ─► fds 1, 2 of the child = fresh pipes ─► selector thread
        ─► whole lines ─► sink.worker_chunk(label, "stdout" | "stderr", lines)  (manager/logs.py:
           timestamps, the worker id, files, JSON) — or, without a sink, "[label] line"
           to the primary's own stdout/stderr

Every pipe end is closed on every path: when a fork fails, and when a worker's pipes
reach EOF (its exit)."""
import os
import selectors
import sys
import threading

from .._lowlevel.wakeup import WakeupPipe

__all__ = ["OutputRelay"]


class OutputRelay:
    def __init__(self):
        self.out = os.dup(1)
        self.err = os.dup(2)
        os.set_inheritable(self.out, False)
        os.set_inheritable(self.err, False)
        self.selector = selectors.DefaultSelector()
        self.wakeup = WakeupPipe()
        self.selector.register(self.wakeup.fileno(), selectors.EVENT_READ, None)
        self.pending = {}
        self.sink = None  # a logs.LogSink, set before the first fork
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="pyclusterc-output", daemon=True)
        self.thread.start()

    def fds(self):
        """The relay's own fds (a forked worker closes them)."""
        return [self.out, self.err, self.wakeup.read_fd, self.wakeup.write_fd]

    def fork(self, fork, label):
        """Run fork() with fds 1 and 2 pointing at fresh pipes; relay them under label.
        Raises OSError (no pipe, no fork) with every fd it made closed again."""
        sys.stdout.flush()
        sys.stderr.flush()
        made = []
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            made += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            made += [err_r, err_w]
            try:
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                worker = fork()
            finally:
                os.dup2(self.out, 1)
                os.dup2(self.err, 2)
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        os.close(out_w)
        os.close(err_w)
        with self.lock:
            for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
                self.pending[fd] = b""
                self.selector.register(fd, selectors.EVENT_READ, (label, stream))
        self.wakeup.wake()
        return worker

    def _run(self):
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    self.wakeup.drain()
                    continue
                label, stream = key.data
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    with self.lock:
                        rest = self.pending.pop(key.fd)
                        self.selector.unregister(key.fd)
                    os.close(key.fd)
                    if rest:
                        self._chunk(label, stream, rest)
                    continue
                # Whole lines on, the unfinished last one kept: no per-line work here
                # (an access log brings hundreds of lines a read).
                buffered = self.pending[key.fd] + data
                end = buffered.rfind(b"\n")
                if end < 0:
                    self.pending[key.fd] = buffered
                    continue
                self.pending[key.fd] = buffered[end + 1:]
                self._chunk(label, stream, buffered[:end])
            if self.stopping and len(self.selector.get_map()) == 1:
                return

    def _chunk(self, label, stream, chunk):
        """Complete lines, joined by newlines, without the last one."""
        if self.sink is not None:
            self.sink.worker_chunk(label, stream, chunk)
            return
        prefix = f"[{label}] ".encode()
        self._write(self.out if stream == "stdout" else self.err,
                    prefix + chunk.replace(b"\n", b"\n" + prefix) + b"\n")

    def reopen(self):
        """USR1: log files are opened again by name (logrotate moved them)."""
        if self.sink is not None:
            self.sink.reopen()

    @staticmethod
    def _write(fd, data):
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            pass

    def drain(self, timeout=2.0):
        """After the workers exited: wait (bounded) for their last lines."""
        self.stopping = True
        self.wakeup.wake()
        self.thread.join(timeout)
        if self.sink is not None:
            self.sink.close()
