"""The sd_notify protocol: how the primary tells systemd (``Type=notify``) that it is ready,
reloading, stopping, what it is doing, and that it is alive (``WatchdogSec``).

    primary ──► Notifier ──sendto(AF_UNIX, SOCK_DGRAM)──► $NOTIFY_SOCKET (systemd, PID 1)
                           "READY=1\\nSTATUS=4 workers ready"

One datagram per call, ``KEY=VALUE`` lines (sd_notify(3)). ``NOTIFY_SOCKET`` is a path
(``/run/systemd/notify``) or an abstract socket written with a leading ``@``. Without
``NOTIFY_SOCKET`` every method does nothing, so the primary calls them unconditionally.
No method raises into the caller: a failed send is counted in ``errors`` and dropped
(systemd then times the unit out, which is the right signal to the operator).

What the caller (the ProcessManager) must do:

- ``notifier = Notifier.from_environ()`` early in the primary, *before forking any
  worker*: it removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from
  ``os.environ`` so the workers and the app do not inherit them (with ``NotifyAccess=main``
  systemd would log and drop their messages; an app that speaks sd_notify itself would
  confuse the unit's state).
- ``notifier.ready(f"{n} workers ready")`` once every wanted worker is ready — the same
  moment as the "ready, N workers" line — and again after each reload completes
  (or is rolled back: the old workers serve, the unit is ready).
- ``notifier.reloading()`` when a HUP / ``reload`` starts (systemd >= 253 with
  ``Type=notify-reload`` requires ``MONOTONIC_USEC``, which it carries).
- ``notifier.stopping()`` when a graceful stop starts.
- ``notifier.status(text)`` whenever the worker count changes (scale, crash, respawn).
- If ``notifier.watchdog_interval()`` is not None, call ``notifier.watchdog()`` every
  that many seconds *from the primary's loop* (a timer on the loop, not a thread: the
  point is to prove the loop is alive). It is half of ``WatchdogSec``, as sd_watchdog_enabled(3)
  recommends.
- ``notifier.close()`` at exit (optional).
"""
import os
import socket
import time

__all__ = ["Notifier"]


class Notifier:
    """Sends sd_notify datagrams to ``address`` (None: a no-op notifier)."""

    def __init__(self, address=None, watchdog_usec=None):
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.errors = 0
        self.sent = 0
        self._sock = None

    @classmethod
    def from_environ(cls, environ=None, unset=True):
        """A notifier for ``$NOTIFY_SOCKET`` (no-op when unset or unusable).

        ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is unset or names this process
        (systemd sets it for the main pid; a child that inherited it must not ping)."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        wpid = env.get("WATCHDOG_PID", "")
        if unset:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(key, None)
        address = None
        if raw.startswith("/"):
            address = raw
        elif raw.startswith("@") and len(raw) > 1:
            address = "\0" + raw[1:]  # Linux abstract namespace
        # vsock: addresses (VMs) and anything else: not supported, so a no-op.
        watchdog = None
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog if address else None)

    @property
    def enabled(self):
        return self.address is not None

    def notify(self, *lines):
        """Send one datagram of ``KEY=VALUE`` lines. True if it was sent."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # MSG_DONTWAIT: a stuck PID 1 must not stall the primary's loop.
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except OSError:
            self.errors += 1
            return False
        self.sent += 1
        return True

    def ready(self, status=None):
        lines = ["READY=1"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines)

    def reloading(self, status="reloading"):
        # MONOTONIC_USEC lets systemd (>= 253) tie this RELOADING=1 to the READY=1 after it.
        lines = ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines)

    def stopping(self, status="stopping"):
        lines = ["STOPPING=1"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines)

    def status(self, text):
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self):
        if self.watchdog_usec is None:
            return False
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self):
        """Seconds between ``watchdog()`` calls (half of WatchdogSec), or None if off."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text):
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return " ".join(str(text).split())
