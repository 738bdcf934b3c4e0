"""Addresses as users write them, listening sockets, and the peer address a handed-over
connection carries (the raw sockaddr in a PC_MSG_CONN record, decoded lazily).

Also the names every side of the cluster shares: policies, the worker environment."""
import signal
import socket
import struct

from .._lowlevel.native import lib

SCHEDULING_POLICIES = ("rr", "least", "sticky", "none", "reuseport")
# Policies under which the primary accepts and hands connections over.
PRIMARY_ACCEPTS = {"rr": lib.PC_SCHED_RR, "least": lib.PC_SCHED_LEAST,
                   "sticky": lib.PC_SCHED_STICKY}

# How a worker finds its primary: set by Primary.fork, read by become_worker.
ENV_ID = "PYCLUSTERC_CLUSTER_WORKER"  # the cluster's worker id (1, 2, ...; Node's worker.id)
ENV_CHANNEL = "PYCLUSTERC_CHANNEL_FD"      # messages and control, both ways
ENV_CONNS = "PYCLUSTERC_CONN_FD"           # connections from the primary's loop
ENV_PRIMARY = "PYCLUSTERC_PRIMARY_PID"
ENV_POLICY = "PYCLUSTERC_SCHED_POLICY"
ENV_SCOREBOARD = "PYCLUSTERC_SCOREBOARD_FD"
ENV_SLOT = "PYCLUSTERC_SCORE_SLOT"


def check_policy(name):
    if name not in SCHEDULING_POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}; use one of {', '.join(SCHEDULING_POLICIES)}")
    return name


def signal_number(sig):
    if isinstance(sig, int) and not isinstance(sig, bool):
        return sig
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal, name):
            return getattr(signal, name)
    raise ValueError(f"unknown signal {sig!r}; use a name like 'SIGTERM' or a number")


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


CONN_MSG = struct.Struct("=II128s")  # struct pc_conn_msg: listener_id, addr_len, addr
_FAMILY = struct.Struct("=H")
_HOSTS = {}  # packed IP -> text: a server sees the same few client addresses again and again


def decode_peer(sockaddr):
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


_SOCKADDR_IN = struct.Struct("=H2s4s8x")      # family (host order), port, address
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")    # family, port, flowinfo, address, scope


def raw_sockaddr(peer, family):
    """The raw sockaddr bytes for a peer address as getpeername() gives it (what a
    PC_MSG_CONN record carries; the sticky policy hashes it). b"" for Unix sockets."""
    if family == socket.AF_INET:
        return _SOCKADDR_IN.pack(family, peer[1].to_bytes(2, "big"), socket.inet_pton(family, peer[0]))
    if family == socket.AF_INET6:
        return _SOCKADDR_IN6.pack(family, peer[1].to_bytes(2, "big"), peer[2],
                                  socket.inet_pton(family, peer[0]), peer[3])
    return b""
