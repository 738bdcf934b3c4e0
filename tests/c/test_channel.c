/* Channels: framed messages with fds over a SOCK_SEQPACKET pair, in-process and
 * across fork; full queues, EOF, and malformed frames sent raw with sendmsg. */
#include "config.h"
#include "pc_channel.h"
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

struct received {
  uint32_t kind, length;
  uint64_t seq;
  int fds[PC_CHANNEL_MAX_FDS];
  int nfds;
  char buf[256];
};

static int recv_msg(int fd, struct received *r) {
  memset(r, 0, sizeof *r);
  return pc_channel_recv(fd, &r->kind, &r->seq, r->buf, sizeof r->buf, &r->length, r->fds, &r->nfds);
}

static int is_cloexec(int fd) { return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

/* The received fd is a working copy of a pipe's write end. */
static void check_pipe_end(int write_end, int read_end) {
  char c = 0;
  ASSERT(is_cloexec(write_end));
  ASSERT_EQ(write(write_end, "x", 1), 1);
  ASSERT_EQ(read(read_end, &c, 1), 1);
  ASSERT_EQ(c, 'x');
}

/* Send a raw datagram: bytes plus optional fds, bypassing the framing. */
static void send_raw(int fd, const void *bytes, size_t len, const int *fds, int nfds) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 64)];
  } cmsg;
  struct iovec iov = {.iov_base = (void *)bytes, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  memset(&cmsg, 0, sizeof cmsg);
  if (nfds > 0) {
    struct cmsghdr *c;
    msg.msg_control = cmsg.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  ASSERT_EQ(sendmsg(fd, &msg, MSG_NOSIGNAL), (ssize_t)len);
}

static void test_pair_flags(void) {
  int ch[2], type = 0;
  socklen_t len = sizeof type;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT(is_cloexec(ch[0]) && is_cloexec(ch[1]));
  ASSERT(fcntl(ch[0], F_GETFL) & O_NONBLOCK);
  ASSERT(fcntl(ch[1], F_GETFL) & O_NONBLOCK);
  ASSERT_EQ(getsockopt(ch[0], SOL_SOCKET, SO_TYPE, &type, &len), 0);
  ASSERT_EQ(type, SOCK_SEQPACKET);
  close(ch[0]);
  close(ch[1]);
}

static void test_data_and_fd(void) {
  int ch[2], p[2], before = count_open_fds();
  struct received r;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), -EAGAIN);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 42, "hello", 5, &p[1], 1), 0);
  ASSERT_EQ(pc_channel_wait_readable(ch[1], 1000000000), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), 0);
  ASSERT_EQ(r.kind, PC_MSG_DATA);
  ASSERT_EQ(r.seq, 42);
  ASSERT_EQ(r.length, 5);
  ASSERT(memcmp(r.buf, "hello", 5) == 0);
  ASSERT_EQ(r.nfds, 1);
  ASSERT(r.fds[0] != p[1]);
  check_pipe_end(r.fds[0], p[0]);
  close(r.fds[0]);
  /* empty payload, no fds, a kind of Python's own */
  ASSERT_EQ(pc_channel_send(ch[1], 16, 7, NULL, 0, NULL, 0), 0);
  ASSERT_EQ(recv_msg(ch[0], &r), 0);
  ASSERT_EQ(r.kind, 16);
  ASSERT_EQ(r.length, 0);
  ASSERT_EQ(r.nfds, 0);
  /* bad arguments */
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 0, NULL, 1, NULL, 0), -EINVAL);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 0, NULL, 0, p, PC_CHANNEL_MAX_FDS + 1), -EINVAL);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 0, NULL, 0, p, -1), -EINVAL);
  {
    int bad = -1;
    ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 0, NULL, 0, &bad, 1), -EINVAL);
  }
  ASSERT_EQ(recv_msg(ch[1], &r), -EAGAIN); /* nothing was sent by the failures */
  close(p[0]);
  close(p[1]);
  close(ch[0]);
  close(ch[1]);
  ASSERT_EQ(count_open_fds(), before);
}

static void test_many_fds(void) {
  int ch[2], pipes[PC_CHANNEL_MAX_FDS][2], ends[PC_CHANNEL_MAX_FDS], i, before = count_open_fds();
  struct received r;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  for (i = 0; i < PC_CHANNEL_MAX_FDS; i++) {
    ASSERT_EQ(pipe(pipes[i]), 0);
    ends[i] = pipes[i][1];
  }
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 1, "many", 4, ends, PC_CHANNEL_MAX_FDS), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), 0);
  ASSERT_EQ(r.nfds, PC_CHANNEL_MAX_FDS);
  for (i = 0; i < PC_CHANNEL_MAX_FDS; i++) {
    check_pipe_end(r.fds[i], pipes[i][0]); /* in the order sent */
    close(r.fds[i]);
    close(pipes[i][0]);
    close(pipes[i][1]);
  }
  close(ch[0]);
  close(ch[1]);
  ASSERT_EQ(count_open_fds(), before);
}

/* A child process gets a pipe end and a message, answers through both. */
static void test_across_fork(void) {
  int ch[2], p[2], status, i;
  struct received r;
  pid_t pid;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(ch[0]);
    close(p[1]);
    close(p[0]);
    for (i = 0; i < 3; i++) {
      if (pc_channel_wait_readable(ch[1], 5000000000LL) != 0) _exit(2);
      if (recv_msg(ch[1], &r) != 0 || r.nfds != 1 || r.seq != (uint64_t)i) _exit(3);
      if (write(r.fds[0], r.buf, r.length) != (ssize_t)r.length) _exit(4);
      close(r.fds[0]);
      if (pc_channel_send(ch[1], PC_MSG_DATA, 100 + (uint64_t)i, r.buf, r.length, NULL, 0) != 0) _exit(5);
    }
    _exit(recv_msg(ch[1], &r) == -EAGAIN ? 0 : 6);
  }
  close(ch[1]);
  for (i = 0; i < 3; i++) {
    char expect[8], got[8] = {0};
    snprintf(expect, sizeof expect, "msg%d", i);
    ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, (uint64_t)i, expect, 4, &p[1], 1), 0);
    ASSERT_EQ(read(p[0], got, 4), 4);
    ASSERT(memcmp(got, expect, 4) == 0);
    ASSERT_EQ(pc_channel_wait_readable(ch[0], 5000000000LL), 0);
    ASSERT_EQ(recv_msg(ch[0], &r), 0);
    ASSERT_EQ(r.seq, 100 + i);
    ASSERT(memcmp(r.buf, expect, 4) == 0);
  }
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  /* the child is gone: its end closed */
  ASSERT_EQ(recv_msg(ch[0], &r), 1);
  close(ch[0]);
  close(p[0]);
  close(p[1]);
}

/* Fill the queue until -EAGAIN: nothing is lost, the failed send's fd is still the
 * caller's, and the queue drains in order. */
static void test_queue_full(void) {
  int ch[2], p[2], sent = 0, i, before = count_open_fds();
  struct received r;
  char payload[100] = {0};
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(pc_channel_wait_writable(ch[0], 0), 0);
  for (;;) {
    int rc = pc_channel_send(ch[0], PC_MSG_DATA, (uint64_t)sent, payload, sizeof payload, &p[1], 1);
    if (rc == -EAGAIN) break;
    ASSERT_EQ(rc, 0);
    ASSERT_LT(++sent, 100000);
  }
  ASSERT_GE(sent, 10);
  ASSERT_GE(fcntl(p[1], F_GETFD), 0);
  ASSERT_EQ(pc_channel_wait_writable(ch[0], 10000000), -ETIMEDOUT);
  for (i = 0; i < sent; i++) {
    ASSERT_EQ(recv_msg(ch[1], &r), 0);
    ASSERT_EQ(r.seq, i);
    ASSERT_EQ(r.nfds, 1);
    close(r.fds[0]);
  }
  ASSERT_EQ(recv_msg(ch[1], &r), -EAGAIN);
  ASSERT_EQ(pc_channel_wait_writable(ch[0], 0), 0);
  close(p[0]);
  close(p[1]);
  close(ch[0]);
  close(ch[1]);
  ASSERT_EQ(count_open_fds(), before);
}

static void test_eof_and_epipe(void) {
  int ch[2];
  struct received r;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 1, "a", 1, NULL, 0), 0);
  close(ch[0]);
  ASSERT_EQ(pc_channel_wait_readable(ch[1], 0), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), 0); /* the queue first */
  ASSERT_EQ(recv_msg(ch[1], &r), 1);
  ASSERT_EQ(recv_msg(ch[1], &r), 1);
  /* no SIGPIPE (it would kill this test) */
  ASSERT_EQ(pc_channel_send(ch[1], PC_MSG_DATA, 1, "a", 1, NULL, 0), -EPIPE);
  close(ch[1]);

  /* The peer closes with our message unread: the kernel reports ECONNRESET once;
   * we still read its message, then EOF. */
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 1, "to1", 3, NULL, 0), 0);
  ASSERT_EQ(pc_channel_send(ch[1], PC_MSG_DATA, 2, "to0", 3, NULL, 0), 0);
  close(ch[1]);
  ASSERT_EQ(recv_msg(ch[0], &r), 0);
  ASSERT_EQ(r.seq, 2);
  ASSERT_EQ(recv_msg(ch[0], &r), 1);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 1, "a", 1, NULL, 0), -EPIPE);
  close(ch[0]);
}

static void test_max_payload(void) {
  int ch[2], max;
  char *big;
  uint32_t kind, length;
  uint64_t seq;
  int fds[PC_CHANNEL_MAX_FDS], nfds;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  max = pc_channel_max_payload(ch[0]);
  ASSERT_GE(max, 1024);
  big = calloc(1, (size_t)max + 1);
  ASSERT(big != NULL);
  big[max - 1] = 'z';
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 9, big, (uint32_t)max + 1, NULL, 0), -EMSGSIZE);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 9, big, (uint32_t)max, NULL, 0), 0);
  memset(big, 0, (size_t)max);
  ASSERT_EQ(pc_channel_recv(ch[1], &kind, &seq, big, (uint32_t)max, &length, fds, &nfds), 0);
  ASSERT_EQ(length, max);
  ASSERT_EQ(big[max - 1], 'z');
  free(big);
  close(ch[0]);
  close(ch[1]);
}

/* Payload larger than cap: -EMSGSIZE, the message described and consumed, its fds
 * closed. */
static void test_cap_too_small(void) {
  int ch[2], p[2], before;
  uint32_t kind = 0, length = 0;
  uint64_t seq = 0;
  int fds[PC_CHANNEL_MAX_FDS], nfds = -1;
  char buf[8];
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  before = count_open_fds();
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 5, "0123456789", 10, p, 2), 0);
  ASSERT_EQ(pc_channel_recv(ch[1], &kind, &seq, buf, sizeof buf, &length, fds, &nfds), -EMSGSIZE);
  ASSERT_EQ(kind, PC_MSG_DATA);
  ASSERT_EQ(seq, 5);
  ASSERT_EQ(length, 10);
  ASSERT_EQ(nfds, 0);
  ASSERT_EQ(count_open_fds(), before);
  ASSERT_EQ(pc_channel_recv(ch[1], &kind, &seq, buf, sizeof buf, &length, fds, &nfds), -EAGAIN);
  ASSERT_EQ(pc_channel_recv(ch[1], &kind, &seq, NULL, 8, &length, fds, &nfds), -EINVAL);
  close(p[0]);
  close(p[1]);
  close(ch[0]);
  close(ch[1]);
}

/* Malformed datagrams, each with fds attached: -EBADMSG, no fd leaked, and the
 * channel still works afterwards. */
static void test_malformed(void) {
  int ch[2], p[2], many[40], i, before, one = 1;
  struct received r;
  struct pc_msg_header h;
  char frame[64] = {0}; /* zeroed: valgrind checks every byte sent */
  struct pc_conn_msg conn;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  before = count_open_fds();

  send_raw(ch[0], "short", 5, p, 2); /* shorter than a header */
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(r.nfds, 0);
  ASSERT_EQ(count_open_fds(), before);

  h.kind = PC_MSG_DATA; /* length says 100, 10 bytes follow */
  h.length = 100;
  h.seq = 1;
  memcpy(frame, &h, sizeof h);
  send_raw(ch[0], frame, sizeof h + 10, p, 2);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);

  h.length = 2; /* length says 2, 10 bytes follow */
  memcpy(frame, &h, sizeof h);
  send_raw(ch[0], frame, sizeof h + 10, p, 1);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);

  h.length = 1000; /* truncated by cap, and the length field lies */
  memcpy(frame, &h, sizeof h);
  {
    char large[600] = {0};
    memcpy(large, &h, sizeof h);
    send_raw(ch[0], large, sizeof large, p, 2);
  }
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);

  send_raw(ch[0], "", 0, p, 2); /* an empty datagram is not EOF */
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  send_raw(ch[0], "", 0, NULL, 0);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);

  /* more fds than we take: MSG_CTRUNC; the kernel drops those that did not fit,
   * we close those that did */
  for (i = 0; i < 40; i++) many[i] = p[i % 2];
  h.length = 0;
  send_raw(ch[0], &h, sizeof h, many, 40);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);

  /* PC_MSG_CONN must carry one fd and a whole pc_conn_msg */
  memset(&conn, 0, sizeof conn);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 1, &conn, sizeof conn, p, 2), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 1, &conn, 8, p, 1), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  conn.addr_len = 129;
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 1, &conn, sizeof conn, p, 1), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);

  /* a cmsg other than SCM_RIGHTS (SO_PASSCRED adds SCM_CREDENTIALS) */
  ASSERT_EQ(setsockopt(ch[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one), 0);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 1, "x", 1, p, 1), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);
  one = 0;
  ASSERT_EQ(setsockopt(ch[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one), 0);

  /* still in sync: a good message reads fine */
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 77, "ok", 2, &p[1], 1), 0);
  ASSERT_EQ(recv_msg(ch[1], &r), 0);
  ASSERT_EQ(r.seq, 77);
  check_pipe_end(r.fds[0], p[0]);
  close(r.fds[0]);
  ASSERT_EQ(count_open_fds(), before);
  close(p[0]);
  close(p[1]);
  close(ch[0]);
  close(ch[1]);
}

/* The same malformed frame from another process: nothing of the child's fds
 * survives in the parent. */
static void test_malformed_across_fork(void) {
  int ch[2], status, before;
  struct received r;
  pid_t pid;
  ASSERT_EQ(pc_channel_pair(ch), 0);
  before = count_open_fds();
  pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int p[2];
    struct pc_msg_header h = {PC_MSG_DATA, 50, 3};
    close(ch[0]);
    if (pipe(p) != 0) _exit(2);
    send_raw(ch[1], &h, sizeof h, p, 2);
    _exit(0);
  }
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(recv_msg(ch[0], &r), -EBADMSG);
  ASSERT_EQ(count_open_fds(), before);
  close(ch[0]);
  close(ch[1]);
}

static void test_wait_timeout(void) {
  int ch[2];
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pc_channel_wait_readable(ch[1], 20000000), -ETIMEDOUT);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 1, NULL, 0, NULL, 0), 0);
  ASSERT_EQ(pc_channel_wait_readable(ch[1], -1), 0);
  close(ch[0]);
  close(ch[1]);
  ASSERT_EQ(pc_channel_wait_readable(ch[1], 0), -EBADF);
}

/* A batch read of connections: at most max taken, the rest left queued; other
 * kinds and malformed messages dropped with their fds closed; then EOF. */
static void test_recv_conns(void) {
  struct pc_conn_msg conn, got[PC_CHANNEL_RECV_CONNS_MAX];
  int ch[2], p[2], fds[PC_CHANNEL_RECV_CONNS_MAX], i, before = count_open_fds();
  struct pc_msg_header bad = {.kind = PC_MSG_CONN, .length = 3, .seq = 9};
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, 1), -EAGAIN);
  for (i = 0; i < 3; i++) {
    memset(&conn, 0, sizeof conn);
    conn.listener_id = 10 + (uint32_t)i;
    conn.addr_len = 4;
    memcpy(conn.addr, "abcd", 4);
    ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, (uint64_t)i + 1, &conn, sizeof conn, &p[1], 1), 0);
  }
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, 2), 2); /* the third stays queued */
  for (i = 0; i < 2; i++) {
    ASSERT_EQ(got[i].listener_id, 10 + (uint32_t)i);
    ASSERT_EQ(got[i].addr_len, 4);
    ASSERT(memcmp(got[i].addr, "abcd", 4) == 0);
    check_pipe_end(fds[i], p[0]);
    close(fds[i]);
  }
  /* behind the third: a data message with an fd, a malformed frame, one more conn */
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_DATA, 4, "x", 1, &p[1], 1), 0);
  send_raw(ch[0], &bad, sizeof bad, &p[1], 1);
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 5, &conn, sizeof conn, &p[1], 1), 0);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, PC_CHANNEL_RECV_CONNS_MAX), 2);
  ASSERT_EQ(got[0].listener_id, 12);
  ASSERT_EQ(got[1].listener_id, 12);
  for (i = 0; i < 2; i++) {
    check_pipe_end(fds[i], p[0]);
    close(fds[i]);
  }
  /* only dropped ones */
  send_raw(ch[0], &bad, sizeof bad, &p[1], 1);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, 4), -EBADMSG);
  /* connections before an EOF come first, then the EOF */
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 6, &conn, sizeof conn, &p[1], 1), 0);
  close(ch[0]);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, 4), 1);
  close(fds[0]);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, 4), 0);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, 0), -EINVAL);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, PC_CHANNEL_RECV_CONNS_MAX + 1), -EINVAL);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], NULL, fds, 1), -EINVAL);
  close(ch[1]);
  close(p[0]);
  close(p[1]);
  ASSERT_EQ(count_open_fds(), before);
}

/* An empty datagram in the middle of a batch, then the peer closes: the
 * connections after it are still delivered (their fds neither lost nor leaked),
 * and EOF comes on the next call. The old loop stopped at the empty entry and
 * leaked the rest of the batch. */
static void test_recv_conns_empty_datagram(void) {
  struct pc_conn_msg conn, got[PC_CHANNEL_RECV_CONNS_MAX];
  int ch[2], p[2], fds[PC_CHANNEL_RECV_CONNS_MAX], i, before = count_open_fds();
  ASSERT_EQ(pc_channel_pair(ch), 0);
  ASSERT_EQ(pipe(p), 0);
  memset(&conn, 0, sizeof conn);
  conn.listener_id = 7;
  ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 1, &conn, sizeof conn, &p[1], 1), 0);
  send_raw(ch[0], "", 0, NULL, 0);
  send_raw(ch[0], "", 0, &p[1], 1); /* empty, with an fd: malformed, closed */
  for (i = 0; i < 3; i++)
    ASSERT_EQ(pc_channel_send(ch[0], PC_MSG_CONN, 2 + (uint64_t)i, &conn, sizeof conn, &p[1], 1), 0);
  close(ch[0]);
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, PC_CHANNEL_RECV_CONNS_MAX), 4);
  for (i = 0; i < 4; i++) {
    ASSERT_EQ(got[i].listener_id, 7);
    check_pipe_end(fds[i], p[0]);
    close(fds[i]);
  }
  ASSERT_EQ(pc_channel_recv_conns(ch[1], got, fds, PC_CHANNEL_RECV_CONNS_MAX), 0);
  close(ch[1]);
  close(p[0]);
  close(p[1]);
  ASSERT_EQ(count_open_fds(), before);
}

int main(void) {
  signal(SIGPIPE, SIG_DFL); /* a SIGPIPE would fail the test */
  RUN_TEST(test_pair_flags);
  RUN_TEST(test_data_and_fd);
  RUN_TEST(test_many_fds);
  RUN_TEST(test_across_fork);
  RUN_TEST(test_queue_full);
  RUN_TEST(test_eof_and_epipe);
  RUN_TEST(test_max_payload);
  RUN_TEST(test_cap_too_small);
  RUN_TEST(test_malformed);
  RUN_TEST(test_malformed_across_fork);
  RUN_TEST(test_wait_timeout);
  RUN_TEST(test_recv_conns);
  RUN_TEST(test_recv_conns_empty_datagram);
  return 0;
}
