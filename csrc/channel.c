/* Channels: framed messages with fds over a SOCK_SEQPACKET socketpair, in the
 * nginx (src/os/unix/ngx_channel.c) / libuv (uv__stream_recv_cmsg) shape. */
#include "channel_internal.h"
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Both ends of a channel may be different builds (a preloaded primary and a
 * re-executed worker), and Python packs these with struct: pin the layout. */
PC_STATIC_ASSERT(sizeof(struct pc_msg_header) == 16, "pc_msg_header is 16 bytes");
PC_STATIC_ASSERT(offsetof(struct pc_msg_header, kind) == 0, "kind at 0");
PC_STATIC_ASSERT(offsetof(struct pc_msg_header, length) == 4, "length at 4");
PC_STATIC_ASSERT(offsetof(struct pc_msg_header, seq) == 8, "seq at 8");
PC_STATIC_ASSERT(sizeof(struct pc_conn_msg) == 136, "pc_conn_msg is 136 bytes");
PC_STATIC_ASSERT(offsetof(struct pc_conn_msg, addr) == 8, "addr at 8");
PC_STATIC_ASSERT(sizeof(((struct pc_conn_msg *)0)->addr) >= sizeof(struct sockaddr_storage),
                 "addr holds any sockaddr");

/* unix_dgram_sendmsg refuses a datagram longer than sk_sndbuf - 32 (EMSGSIZE),
 * net/unix/af_unix.c, unchanged from 2.6 to 6.x. */
enum { KERNEL_DGRAM_RESERVE = 32 };

int pc_channel_pair(int fds[2]) {
  if (fds == NULL) return -EINVAL;
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0) return -errno;
  return 0;
}

int pc_channel_max_payload(int fd) {
  int sndbuf = 0;
  socklen_t len = sizeof sndbuf;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0) return -errno;
  sndbuf -= KERNEL_DGRAM_RESERVE + (int)sizeof(struct pc_msg_header);
  return sndbuf > 0 ? sndbuf : -ENOBUFS;
}

int pc__channel_prepare(struct msghdr *msg, struct pc__outmsg *out, uint32_t kind, uint64_t seq,
                        const void *payload, uint32_t length, const int *fds, int nfds) {
  int i;
  if (nfds < 0 || nfds > PC_CHANNEL_MAX_FDS || (nfds > 0 && fds == NULL)) return -EINVAL;
  if (payload == NULL && length > 0) return -EINVAL;
  if (length > INT_MAX - sizeof(struct pc_msg_header)) return -EMSGSIZE;
  for (i = 0; i < nfds; i++)
    if (fds[i] < 0) return -EINVAL;

  out->header.kind = kind;
  out->header.length = length;
  out->header.seq = seq;
  out->iov[0].iov_base = &out->header;
  out->iov[0].iov_len = sizeof out->header;
  out->iov[1].iov_base = (void *)payload;
  out->iov[1].iov_len = length;
  memset(msg, 0, sizeof *msg);
  msg->msg_iov = out->iov;
  msg->msg_iovlen = length > 0 ? 2 : 1;
  if (nfds > 0) {
    struct cmsghdr *cmsg;
    msg->msg_control = out->cmsg.buf;
    msg->msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    /* CMSG_SPACE pads past CMSG_LEN: zero it all, so no stack bytes go to the
     * kernel uninitialised (valgrind: "sendmsg(msg.msg_control) points to
     * uninitialised byte(s)"). */
    memset(out->cmsg.buf, 0, msg->msg_controllen);
    cmsg = CMSG_FIRSTHDR(msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
  }
  return 0;
}

int pc__channel_send_error(int err) {
  switch (err) {
  case EWOULDBLOCK:
    return -EAGAIN;
  /* The peer closed: EPIPE once it is gone, ECONNRESET (once) when it closed with
   * our messages unread, ENOTCONN / ECONNREFUSED after the pair was torn down. */
  case EPIPE:
  case ECONNRESET:
  case ENOTCONN:
  case ECONNREFUSED:
    return -EPIPE;
  default:
    return -err;
  }
}

int pc_channel_send(int fd, uint32_t kind, uint64_t seq, const void *payload, uint32_t length,
                    const int *fds, int nfds) {
  struct pc__outmsg out;
  struct msghdr msg;
  ssize_t n;
  int rc = pc__channel_prepare(&msg, &out, kind, seq, payload, length, fds, nfds);
  if (rc < 0) return rc;
  do
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) return pc__channel_send_error(errno);
  return 0; /* SEQPACKET: a datagram goes whole or not at all */
}

static void close_fds(int *fds, int n) {
  int i;
  for (i = 0; i < n; i++) close(fds[i]);
}

/* Collect the fds from every SCM_RIGHTS cmsg (so that all of them can be closed on
 * any error); 0, or -EBADMSG when a cmsg is not SCM_RIGHTS, its length is not a
 * whole number of ints, or it claims more bytes than the control buffer holds (the
 * kernel never writes such a cmsg; the check keeps a bad one from being read past
 * its buffer, tests/fuzz/fuzz_cmsg.c). The kernel never installs more fds than the
 * control buffer holds (the rest it drops and flags MSG_CTRUNC), and at most
 * PC_CHANNEL_MAX_FDS are taken, so fds[] cannot overflow. */
int pc__channel_collect_fds(struct msghdr *msg, int *fds, int *nfds) {
  struct cmsghdr *cmsg;
  const char *end;
  int rc = 0;
  *nfds = 0;
  if (msg->msg_control == NULL) return 0;
  end = (const char *)msg->msg_control + msg->msg_controllen;
  for (cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL; cmsg = CMSG_NXTHDR(msg, cmsg)) {
    size_t bytes, count;
    if (cmsg->cmsg_len < CMSG_LEN(0) || cmsg->cmsg_len > (size_t)(end - (const char *)cmsg)) {
      rc = -EBADMSG;
      break; /* its length cannot be trusted to find the next one either */
    }
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
      rc = -EBADMSG;
      continue;
    }
    bytes = cmsg->cmsg_len - CMSG_LEN(0);
    if (bytes % sizeof(int) != 0) rc = -EBADMSG;
    count = bytes / sizeof(int);
    if (count > (size_t)(PC_CHANNEL_MAX_FDS - *nfds)) count = (size_t)(PC_CHANNEL_MAX_FDS - *nfds);
    memcpy(fds + *nfds, CMSG_DATA(cmsg), count * sizeof(int));
    *nfds += (int)count;
  }
  return rc;
}

/* recvmsg returned 0: a SEQPACKET end reads 0 both at EOF and for an empty
 * datagram (which we never send). Tell them apart by the peer's shutdown. */
static int eof_or_empty(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
  if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP))) return 1;
  return -EBADMSG;
}

static int conn_msg_valid(const void *buf, uint32_t length, int nfds) {
  struct pc_conn_msg conn;
  if (nfds != 1 || length != sizeof conn) return 0;
  memcpy(&conn, buf, sizeof conn);
  return conn.addr_len <= sizeof conn.addr;
}

/* Check one received datagram (n bytes, header then payload in buf of cap bytes),
 * with its fds collected into fds[] and *nfds: 0 ok, 1 EOF, or -EBADMSG / -EMSGSIZE as
 * pc_channel_recv documents. On an error the fds are closed and *nfds is 0. */
static int check_received(int fd, struct msghdr *msg, size_t n, const struct pc_msg_header *header,
                          const void *buf, uint32_t cap, int *fds, int *nfds) {
  int rc = pc__channel_collect_fds(msg, fds, nfds);
  if (rc == 0 && (msg->msg_flags & MSG_CTRUNC)) rc = -EBADMSG;
  if (rc == 0 && n == 0) {
    rc = *nfds > 0 ? -EBADMSG : eof_or_empty(fd);
    if (rc == 1) return 1;
  }
  if (rc == 0 && n < sizeof *header) rc = -EBADMSG;
  if (rc == 0) {
    size_t payload = n - sizeof *header;
    if (header->length != payload)
      rc = -EBADMSG;
    else if (payload > cap)
      rc = -EMSGSIZE;
    else if (header->kind == PC_MSG_CONN && !conn_msg_valid(buf, header->length, *nfds))
      rc = -EBADMSG;
  }
  if (rc < 0) {
    close_fds(fds, *nfds);
    *nfds = 0;
  }
  return rc;
}

/* Point msg at a header, a payload buffer and a cmsg buffer for one receive. */
static void prepare_recv(struct msghdr *msg, struct iovec iov[2], struct pc_msg_header *header, void *buf,
                         uint32_t cap, void *control, size_t control_len) {
  iov[0].iov_base = header;
  iov[0].iov_len = sizeof *header;
  iov[1].iov_base = buf;
  iov[1].iov_len = cap;
  memset(msg, 0, sizeof *msg);
  msg->msg_iov = iov;
  msg->msg_iovlen = 2;
  msg->msg_control = control;
  msg->msg_controllen = control_len;
}

/* MSG_TRUNC makes recvmsg return the datagram's real length (unix sockets since
 * Linux 3.4), so that a payload larger than cap is told apart from a lie in the
 * length field. */
enum { RECV_FLAGS = MSG_CMSG_CLOEXEC | MSG_TRUNC | MSG_DONTWAIT };

int pc_channel_recv(int fd, uint32_t *kind, uint64_t *seq, void *buf, uint32_t cap, uint32_t *length,
                    int *fds, int *nfds) {
  struct pc_msg_header header;
  struct iovec iov[2];
  struct msghdr msg;
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * PC_CHANNEL_MAX_FDS)];
  } cmsg;
  ssize_t n;
  int rc;

  if (kind == NULL || seq == NULL || length == NULL || fds == NULL || nfds == NULL) return -EINVAL;
  if (buf == NULL && cap > 0) return -EINVAL;
  *nfds = 0;
  prepare_recv(&msg, iov, &header, buf, cap, cmsg.buf, sizeof cmsg.buf);
  /* ECONNRESET is the peer closing with our messages unread: it is reported once,
   * before the queue; retry to get the queue, then EOF. */
  do
    n = recvmsg(fd, &msg, RECV_FLAGS);
  while (n < 0 && (errno == EINTR || errno == ECONNRESET));
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;

  rc = check_received(fd, &msg, (size_t)n, &header, buf, cap, fds, nfds);
  if (rc == 1) return 1;
  if (rc == 0 || rc == -EMSGSIZE) {
    *kind = header.kind;
    *seq = header.seq;
    *length = header.length;
  }
  return rc;
}

int pc_channel_recv_conns(int fd, struct pc_conn_msg *conns, int *fds, int max) {
  struct pc_msg_header headers[PC_CHANNEL_RECV_CONNS_MAX];
  struct iovec iov[PC_CHANNEL_RECV_CONNS_MAX][2];
  struct mmsghdr msgs[PC_CHANNEL_RECV_CONNS_MAX];
  /* Room for one fd each: a message with more is malformed anyway, and the kernel
   * closes what does not fit (MSG_CTRUNC). */
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cmsg[PC_CHANNEL_RECV_CONNS_MAX];
  int i, n, got = 0, malformed = 0, eof = 0;

  if (conns == NULL || fds == NULL || max < 1 || max > PC_CHANNEL_RECV_CONNS_MAX) return -EINVAL;
  for (i = 0; i < max; i++) {
    prepare_recv(&msgs[i].msg_hdr, iov[i], &headers[i], &conns[i], sizeof conns[i], cmsg[i].buf,
                 sizeof cmsg[i].buf);
    msgs[i].msg_len = 0;
  }
  do
    n = recvmmsg(fd, msgs, (unsigned)max, RECV_FLAGS, NULL);
  while (n < 0 && (errno == EINTR || errno == ECONNRESET));
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;

  /* Move the good ones to the front, in order. A receive of 0 bytes is EOF or an
   * empty datagram (which we never send): look at every entry all the same, so
   * that the fds of entries after it are delivered or closed, never leaked. An
   * EOF is reported only when no connection came with it (then on the next call
   * otherwise, recvmmsg reading it again). */
  for (i = 0; i < n; i++) {
    int received[PC_CHANNEL_MAX_FDS], nreceived = 0;
    int rc = check_received(fd, &msgs[i].msg_hdr, msgs[i].msg_len, &headers[i], &conns[i],
                            sizeof conns[i], received, &nreceived);
    if (rc == 1) {
      eof = 1;
      continue;
    }
    if (rc == 0 && headers[i].kind != PC_MSG_CONN) {
      /* only connections travel on this channel: drop anything else */
      close_fds(received, nreceived);
      rc = -EBADMSG;
    }
    if (rc < 0) {
      malformed = 1;
      continue;
    }
    if (got != i) conns[got] = conns[i];
    fds[got++] = received[0];
  }
  if (got > 0) return got;
  if (eof) return 0;
  return malformed ? -EBADMSG : -EAGAIN;
}

static int wait_for(int fd, short events, int64_t timeout_ns) {
  struct pollfd p = {.fd = fd, .events = events};
  struct timespec ts, *tsp = NULL;
  int n;
  if (timeout_ns >= 0) {
    ts.tv_sec = (time_t)(timeout_ns / 1000000000);
    ts.tv_nsec = (long)(timeout_ns % 1000000000);
    tsp = &ts;
  }
  n = ppoll(&p, 1, tsp, NULL);
  if (n < 0) return -errno;
  if (n == 0) return -ETIMEDOUT;
  if (p.revents & POLLNVAL) return -EBADF;
  return 0;
}

int pc_channel_wait_readable(int fd, int64_t timeout_ns) { return wait_for(fd, POLLIN, timeout_ns); }

int pc_channel_wait_writable(int fd, int64_t timeout_ns) { return wait_for(fd, POLLOUT, timeout_ns); }
