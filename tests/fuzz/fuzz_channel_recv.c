/* libFuzzer harness: a peer that sends anything on a channel. The input is cut into
 * datagrams, each sent raw on a SOCK_SEQPACKET pair with some fds attached (and, by
 * a flag, with SO_PASSCRED on the receiver, so SCM_CREDENTIALS comes too); then the
 * receiver drains the channel with pc_channel_recv or pc_channel_recv_conns.
 * Checked: only documented return codes, every fd received is either delivered (and
 * closed here) or closed by the core (the process's open fd count is back where it
 * was), and nothing reads or writes out of bounds (ASan/UBSan). See docs/fuzzing.md.
 *
 * Input: byte 0 = flags (bit 0: recv_conns, bit 1: SO_PASSCRED), then datagrams,
 * each `len_lo len_hi nfds bytes...` (nfds % 20: up to 19, past PC_CHANNEL_MAX_FDS,
 * so MSG_CTRUNC happens too). */
#include "pc_channel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  if (d == NULL) abort();
  while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

static void send_raw(int fd, const uint8_t *bytes, size_t len, int nfds, int fd_to_pass) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 20)];
  } cmsg;
  struct iovec iov = {.iov_base = (void *)bytes, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  int i, fds[20];
  memset(&cmsg, 0, sizeof cmsg);
  if (nfds > 0) {
    struct cmsghdr *c;
    for (i = 0; i < nfds; i++) fds[i] = fd_to_pass;
    msg.msg_control = cmsg.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  (void)sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT); /* a full queue just drops it */
}

static void drain(int fd, int conns) {
  for (;;) {
    int rc, i;
    if (conns) {
      struct pc_conn_msg got[PC_CHANNEL_RECV_CONNS_MAX];
      int fds[PC_CHANNEL_RECV_CONNS_MAX];
      rc = pc_channel_recv_conns(fd, got, fds, PC_CHANNEL_RECV_CONNS_MAX);
      if (rc > 0) {
        for (i = 0; i < rc; i++) {
          if (got[i].addr_len > sizeof got[i].addr) abort();
          close(fds[i]);
        }
        continue;
      }
      if (rc == -EBADMSG) continue;
      if (rc != -EAGAIN && rc != 0) abort();
      return;
    } else {
      uint32_t kind, length;
      uint64_t seq;
      char buf[256];
      int fds[PC_CHANNEL_MAX_FDS], nfds = -1;
      rc = pc_channel_recv(fd, &kind, &seq, buf, sizeof buf, &length, fds, &nfds);
      if (rc == 0) {
        if (nfds < 0 || nfds > PC_CHANNEL_MAX_FDS || length > sizeof buf) abort();
        for (i = 0; i < nfds; i++) close(fds[i]);
        continue;
      }
      if (nfds != 0) abort(); /* every error path leaves no fd */
      if (rc == -EBADMSG || rc == -EMSGSIZE) continue;
      if (rc != -EAGAIN && rc != 1) abort();
      return;
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int ch[2], one = 1, before, passed;
  size_t at = 1;
  if (size < 1) return 0;
  before = count_fds();
  if (pc_channel_pair(ch) < 0) abort();
  passed = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (passed < 0) abort();
  if (data[0] & 2) setsockopt(ch[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
  while (at + 3 <= size) {
    size_t len = (size_t)data[at] | (size_t)data[at + 1] << 8;
    int nfds = data[at + 2] % 20;
    at += 3;
    if (len > size - at) len = size - at;
    send_raw(ch[0], data + at, len, nfds, passed);
    at += len;
  }
  if (data[0] & 4) close(ch[0]); /* and EOF behind the datagrams */
  drain(ch[1], data[0] & 1);
  if (!(data[0] & 4)) close(ch[0]);
  close(ch[1]);
  close(passed);
  if (count_fds() != before) abort(); /* an fd leaked */
  return 0;
}
