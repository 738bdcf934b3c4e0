/* Channels: one SOCK_SEQPACKET socketpair per worker carrying framed messages,
 * each with optional fds (SCM_RIGHTS).
 *
 * This header is read twice: by the C compiler, and by cffi's cdef parser when the
 * build generates pyclusterc._native (python/build_native.py strips the lines that
 * start with '#'). So it holds plain declarations only: no macros, no inline code.
 *
 * Every function returns >= 0 or -errno unless it says otherwise.
 */
#ifndef PC_CHANNEL_H
#define PC_CHANNEL_H
#include <stdint.h>

enum { PC_CHANNEL_MAX_FDS = 16 };
/* Most connections one pc_channel_recv_conns call takes. */
enum { PC_CHANNEL_RECV_CONNS_MAX = 16 };
/* Message kinds used by the core; Python uses values >= 16 for its own frames. */
enum { PC_MSG_CONN = 1, PC_MSG_DATA = 2 };

/* The frame every message starts with (pinned with static asserts in channel.c).
 * length is the number of payload bytes after the header. */
struct pc_msg_header {
  uint32_t kind;
  uint32_t length;
  uint64_t seq;
};

/* Payload of a PC_MSG_CONN message: one accepted connection, its fd attached.
 * Always sent whole (length == sizeof(struct pc_conn_msg)); addr holds addr_len
 * bytes of the peer's sockaddr as accept4 returned it. The dispatch loop sets the
 * header's seq to the per-worker count of connections handed (1, 2, ...). */
struct pc_conn_msg {
  uint32_t listener_id;
  uint32_t addr_len;
  uint8_t addr[128];
};

/* socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK);
 * fds[0] is the primary's end, fds[1] the worker's. */
int pc_channel_pair(int fds[2]);

/* Largest payload one message can carry on this fd: SO_SNDBUF minus the kernel's
 * per-datagram reserve and our header. Python fragments larger messages. Such a
 * message fills the whole send buffer, so a sender that wants two in flight uses
 * half of it. */
int pc_channel_max_payload(int fd);

/* Send one message with up to PC_CHANNEL_MAX_FDS fds (sendmsg, MSG_NOSIGNAL |
 * MSG_DONTWAIT: never blocks, never raises SIGPIPE; EINTR retried in place).
 * 0 on success: the receiver now holds its own copies, the caller still closes
 * its fds. -EAGAIN when the queue is full (nothing sent); -EPIPE when the peer is
 * gone; -EMSGSIZE when the payload is larger than pc_channel_max_payload; -EINVAL
 * for nfds outside 0..PC_CHANNEL_MAX_FDS, a negative fd, or payload NULL with
 * length > 0; other -errno from sendmsg (-EBADF, -ETOOMANYREFS: too many fds in
 * flight for this user, see unix(7)). */
int pc_channel_send(int fd, uint32_t kind, uint64_t seq, const void *payload, uint32_t length,
                    const int *fds, int nfds);

/* Receive one message: the header's fields into *kind, *seq, *length, the payload
 * into buf (cap bytes), the fds (close-on-exec, MSG_CMSG_CLOEXEC) into
 * fds[PC_CHANNEL_MAX_FDS] and their count into *nfds.
 * Returns 0 ok; 1 EOF (peer closed and the queue is empty); -EAGAIN nothing queued;
 * -EBADMSG malformed: shorter than a header, the length field != the bytes that
 * came, MSG_CTRUNC (more fds than PC_CHANNEL_MAX_FDS), a cmsg other than
 * SOL_SOCKET/SCM_RIGHTS (e.g. SO_PASSCRED is on), or a PC_MSG_CONN that does not
 * carry exactly one fd and a whole struct pc_conn_msg with addr_len <= 128;
 * -EMSGSIZE the payload is larger than cap (the message is consumed: *kind, *seq
 * and *length still describe it); -EINVAL a NULL out pointer, or buf NULL with
 * cap > 0. On every error path every fd received is closed and *nfds is 0.
 * A peer that closed with messages of ours unread (ECONNRESET) reads as the rest
 * of the queue, then EOF. */
int pc_channel_recv(int fd, uint32_t *kind, uint64_t *seq, void *buf, uint32_t cap,
                    uint32_t *length, int *fds, int *nfds);

/* Receive up to max (1..PC_CHANNEL_RECV_CONNS_MAX) queued PC_MSG_CONN messages in
 * one recvmmsg: their payloads into conns[i], their fds (close-on-exec) into
 * fds[i], oldest first. For a channel that carries only connections (a worker's
 * connection channel): it takes no more than max off the queue, so a caller that
 * passes what it will serve now leaves the rest queued in the kernel. Any other
 * message, or a malformed one (as pc_channel_recv defines it), is dropped and its
 * fds closed. Returns the number of connections (> 0); 0 EOF (peer closed and the
 * queue is empty); -EAGAIN nothing queued; -EBADMSG only dropped messages came;
 * -EINVAL NULL arrays or max out of range. */
int pc_channel_recv_conns(int fd, struct pc_conn_msg *conns, int *fds, int max);

/* poll() for readable / writable with a nanosecond timeout (ppoll); < 0 waits
 * forever. 0 ready (HUP and errors count as ready: the next call reports them),
 * -ETIMEDOUT, -EINTR (returned, not retried: Python runs its handlers and calls
 * again with the time left), -EBADF for an fd that is not open. A SEQPACKET end is
 * writable again once less than a quarter of its send buffer is queued. */
int pc_channel_wait_readable(int fd, int64_t timeout_ns);
int pc_channel_wait_writable(int fd, int64_t timeout_ns);

#endif
