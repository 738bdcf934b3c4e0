"""One wakeup pipe: a loop watches ``fileno()``; any thread (or a signal handler, through
``signal.set_wakeup_fd(pipe.write_fd)``) calls ``wake()`` to make it look again. And
``call_in_loop``: an asyncio loop's call_soon_threadsafe for a loop that may have ended."""
import os

__all__ = ["WakeupPipe", "call_in_loop"]


def call_in_loop(loop, callback):
    """``loop.call_soon_threadsafe(callback)`` from any thread; False, and nothing done,
    once the loop is closed (a second stop signal after that loop finished draining)."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # "Event loop is closed": the loop has nothing left to do
        return False
    return True


class WakeupPipe:
    """A non-blocking, close-on-exec pipe. A full pipe already means "wake up", so
    ``wake()`` never blocks and never fails."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self):
        return self.read_fd

    def wake(self):
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass

    def drain(self):
        """Empty the pipe (call it when woken, before looking at the shared state)."""
        try:
            while len(os.read(self.read_fd, 4096)) == 4096:
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1
