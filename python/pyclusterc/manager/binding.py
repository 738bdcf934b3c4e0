"""Where a cluster listens: ``--bind`` addresses, ``fd://N`` and systemd socket activation,
bound in the primary (so "address in use" is reported once, before any worker starts)
and registered with the cluster, which shares them with the workers."""
import os
import socket
import stat

from .. import cluster
from ..cluster import format_address, parse_address
from .settings import ConfigError

__all__ = ["bind_all", "systemd_sockets", "DEFAULT_BIND"]

DEFAULT_BIND = "127.0.0.1:8000"


def parse_binds(binds, sched, script):
    """(kind, value) per bind: ("address", (family, sockaddr)) or ("socket", sock).
    No --bind: systemd's sockets if any, else DEFAULT_BIND (none for a script, which
    listens where it wants)."""
    result = [("socket", sock) for sock in systemd_sockets()]
    if not binds and not result and not script:
        binds = (DEFAULT_BIND,)
    for text in binds:
        if text.startswith("fd://"):
            result.append(("socket", socket_from_fd(text)))
            continue
        try:
            family, sockaddr = parse_address(text, default_host="127.0.0.1")
        except ValueError:
            raise ConfigError(f"invalid --bind {text!r}: use HOST:PORT, [::1]:PORT, unix:PATH or fd://N") from None
        result.append(("address", (family, sockaddr)))
    if sched == "reuseport" and any(kind == "socket" for kind, _ in result):
        raise ConfigError("conflicting options: --sched reuseport binds a socket per worker; "
                          "it cannot use fd:// or systemd sockets")
    return result


def socket_from_fd(text):
    number = text[5:]
    if not number.isdigit():
        raise ConfigError(f"invalid --bind {text!r}: fd:// takes a file descriptor number")
    try:
        sock = socket.socket(fileno=int(number))
    except OSError:
        raise ConfigError(f"invalid --bind {text!r}: fd {number} is not an open socket") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"invalid --bind {text!r}: fd {number} is not a listening stream socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def systemd_sockets():
    """Listening sockets passed by systemd socket activation (sd_listen_fds)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # our workers must not take them for their own
    return [socket_from_fd(f"fd://{fd}") for fd in range(3, 3 + count)]


def display(family, sockaddr):
    return format_address(sockaddr) if family == socket.AF_UNIX else "http://" + format_address(sockaddr)


def bind_all(binds, sched, script, backlog=2048, say=print):
    """Create the listening sockets in the primary and register them with the cluster.
    Returns the worker-side address strings. Raises ConfigError, or OSError naming the
    address."""
    addresses = []
    for kind, value in parse_binds(binds, sched, script):
        if kind == "socket":
            family, sockaddr = cluster.adopt_socket(value)
        else:
            family, sockaddr = value
            if family == socket.AF_UNIX:
                remove_stale_unix_socket(sockaddr)
            family, sockaddr = cluster.bind(format_address(sockaddr), backlog)
        addresses.append(format_address(sockaddr))
        say(f"listening on {display(family, sockaddr)}")
    return tuple(addresses)


def remove_stale_unix_socket(path):
    """A socket file nobody listens on (a previous run) would make bind fail."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()
