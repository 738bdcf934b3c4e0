"""``Listener``: what ``cluster.listen()`` returns in a worker — connections for one
address, handed over by the primary (rr/least/sticky) or accepted on a shared or
reuseport socket (none/reuseport); blocking, iterator and asyncio forms.

asyncio is imported by the async forms when they run (it is loaded then anyway), not
at import: the command line reads this package's names and should start light."""
import collections
import os
import select
import socket
import time

from .._lowlevel.wakeup import call_in_loop
from .addresses import decode_peer, format_address

SERVE_BATCH = 8     # connections Listener.serve takes per channel read


def step_quietly(loop, coro):
    """Run a coroutine to its end from the loop's callbacks, as a Task would, without a
    Task's bookkeeping: about 5 µs less per connection started under uvloop. The
    futures it awaits keep it alive. Its result and errors are dropped: for
    connect_accepted_socket an error is a client gone before its protocol started."""
    try:
        awaited = coro.send(None)
    except Exception:  # noqa: BLE001 - StopIteration (done) included
        return
    if awaited is None:  # a bare yield: asyncio.sleep(0)
        loop.call_soon(step_quietly, loop, coro)
    else:
        awaited.add_done_callback(lambda _: step_quietly(loop, coro))


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
        self.pending = collections.deque()
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

    def deliver(self, sock, sockaddr):
        """A connection for this listener that another one's accept read."""
        self.pending.append((sock, sockaddr))
        os.eventfd_write(self._wake, 1)

    def _poll(self, most=1):
        """(socket, raw sockaddr) of a waiting connection, or None, without blocking.
        most: how many the channel read may take; the caller serves them all now."""
        if self.closed:
            raise ValueError("the Listener is closed")
        if self.pending:
            return self.pending.popleft()
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
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    conn, peer = self._sock.accept()
                    conn.setblocking(True)
                    return self._owner.track(conn), peer
                except BlockingIOError:
                    pass
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if left == 0.0:
                    raise TimeoutError(f"no connection on {self!r} within {timeout} s")
                select.select([self._sock], [], [], left)
                if self.closed:
                    raise ValueError("the Listener was closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self._poll()
            if got is not None:
                got[0].setblocking(True)  # as socket.accept() returns it; the primary's is non-blocking
                return got[0], decode_peer(got[1])
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
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
        import asyncio
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
                    return got[0], decode_peer(got[1])
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
        import asyncio
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()  # resolved by close(), from whichever thread

        def on_close():
            call_in_loop(loop, lambda: stopped.done() or stopped.set_result(None))
        self._on_close.add(on_close)
        try:
            if self._sock is not None:
                await self._serve_own_socket(loop, protocol_factory, stopped)
            else:
                await self._serve_channel(loop, protocol_factory, stopped, batch or SERVE_BATCH)
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
                    step_quietly(loop, loop.connect_accepted_socket(protocol_factory, got[0]))
                    got = self.pending.popleft() if self.pending else None
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

    def hand_back(self, sock):
        """While draining: give an idle connection (no request in progress, nothing
        buffered) back to the primary, which passes it to a ready worker, so the client
        never sees a close. True when handed back; the caller then closes its own socket
        object as usual (that does not end the connection). False under none/reuseport
        (no primary in between) or when the primary cannot take it."""
        if self._sock is not None or self.listener_id is None:
            return False
        return self._owner.hand_back(sock, self.listener_id)

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
        while self.pending:
            sock, sockaddr = self.pending.popleft()
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
