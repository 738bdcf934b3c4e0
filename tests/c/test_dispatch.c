/* The dispatch loop: a real 127.0.0.1 listener, clients that connect(), socketpair
 * channels whose worker ends the test reads (in-process) or a forked worker reads.
 * Policy choices, backpressure, hand-off, removal, watched fds, timeouts. */
#include "config.h"
#include "pc_channel.h"
#include "pc_dispatch.h"
#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { NW = 3, LID = 7 };

struct fixture {
  struct pc_dispatch *d;
  int listen_fd;
  uint16_t port;
  int ch[NW][2]; /* [0] the primary's end, [1] the worker's */
  struct pc_score_slot slots[NW];
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int make_listener(uint16_t *port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  ASSERT_EQ(listen(fd, 128), 0);
  ASSERT_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

/* A blocking client; from_ip binds the local address (127.0.0.x) when not 0. */
static int client(uint16_t port, uint32_t from_ip, uint16_t *local_port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  if (from_ip != 0) {
    struct sockaddr_in b = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(from_ip)};
    ASSERT_EQ(bind(fd, (struct sockaddr *)&b, sizeof b), 0);
  }
  ASSERT_EQ(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  if (local_port) {
    ASSERT_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *local_port = ntohs(a.sin_port);
  }
  return fd;
}

static void setup(struct fixture *f, int sched, int nworkers) {
  int err = 1, i;
  memset(f, 0, sizeof *f);
  f->d = pc_dispatch_new(sched, &err);
  ASSERT(f->d != NULL);
  ASSERT_EQ(err, 0);
  f->listen_fd = make_listener(&f->port);
  ASSERT_EQ(pc_dispatch_add_listener(f->d, LID, f->listen_fd), 0);
  ASSERT_EQ(pc_dispatch_add_listener(f->d, LID, f->listen_fd), -EEXIST);
  for (i = 0; i < nworkers; i++) {
    ASSERT_EQ(pc_channel_pair(f->ch[i]), 0);
    ASSERT_EQ(pc_dispatch_add_worker(f->d, (uint32_t)i + 1, f->ch[i][0], &f->slots[i]), 0);
    ASSERT_EQ(pc_dispatch_worker_listen(f->d, (uint32_t)i + 1, LID), 0);
  }
}

static void teardown(struct fixture *f, int nworkers) {
  int i;
  pc_dispatch_free(f->d);
  close(f->listen_fd);
  for (i = 0; i < nworkers; i++) {
    close(f->ch[i][0]);
    close(f->ch[i][1]);
  }
}

static int64_t total_handed(struct fixture *f, int nworkers) {
  int64_t total = 0;
  int i;
  for (i = 0; i < nworkers; i++) {
    int64_t n = pc_dispatch_handed(f->d, (uint32_t)i + 1);
    total += n > 0 ? n : 0; /* -ENOENT for a removed worker */
  }
  return total;
}

/* Run the loop until `total` connections have been handed (bounded: 5 s). */
static void pump_until(struct fixture *f, int nworkers, int64_t total) {
  struct pc_event ev[8];
  int64_t deadline = now_ns() + 5000000000LL;
  while (total_handed(f, nworkers) < total) {
    int rc = pc_dispatch_run(f->d, 10000000, ev, 8);
    ASSERT_GE(rc, 0);
    ASSERT(now_ns() < deadline);
  }
  ASSERT_EQ(total_handed(f, nworkers), total);
}

/* Read one PC_MSG_CONN from a worker end; returns the fd, checks the fields. */
static int take_conn(int worker_end, uint16_t *peer_port) {
  struct pc_conn_msg conn;
  uint32_t kind, length;
  uint64_t seq;
  int fds[PC_CHANNEL_MAX_FDS], nfds;
  struct sockaddr_in a;
  ASSERT_EQ(pc_channel_recv(worker_end, &kind, &seq, &conn, sizeof conn, &length, fds, &nfds), 0);
  ASSERT_EQ(kind, PC_MSG_CONN);
  ASSERT_EQ(length, sizeof conn);
  ASSERT_EQ(nfds, 1);
  ASSERT_EQ(conn.listener_id, LID);
  ASSERT_EQ(conn.addr_len, sizeof a);
  memcpy(&a, conn.addr, sizeof a);
  ASSERT_EQ(a.sin_family, AF_INET);
  if (peer_port) *peer_port = ntohs(a.sin_port);
  return fds[0];
}

/* Drain every message queued on a worker end; returns how many were conns. */
static int drain(int worker_end) {
  char buf[256];
  uint32_t kind, length;
  uint64_t seq;
  int fds[PC_CHANNEL_MAX_FDS], nfds, conns = 0, i;
  while (pc_channel_recv(worker_end, &kind, &seq, buf, sizeof buf, &length, fds, &nfds) == 0) {
    conns += kind == PC_MSG_CONN;
    for (i = 0; i < nfds; i++) close(fds[i]);
  }
  return conns;
}

/* Fill a channel with data messages until it returns -EAGAIN. */
static void fill(int primary_end) {
  char payload[200] = {0};
  int n = 0;
  while (pc_channel_send(primary_end, PC_MSG_DATA, 0, payload, sizeof payload, NULL, 0) == 0) ASSERT_LT(++n, 100000);
}

/* The passed fd is the server side of the client's connection. */
static void check_connected(int conn_fd, int client_fd) {
  char c = 0;
  ASSERT_EQ(write(conn_fd, "k", 1), 1);
  ASSERT_EQ(read(client_fd, &c, 1), 1);
  ASSERT_EQ(c, 'k');
}

/* One connection at a time: workers 1,2,3,1,2,3; each fd is the client's peer. */
static void test_rr_sequence(void) {
  struct fixture f;
  int i, before = count_open_fds();
  setup(&f, PC_SCHED_RR, NW);
  for (i = 0; i < 2 * NW; i++) {
    uint16_t local, peer;
    int c = client(f.port, 0, &local), conn, w;
    pump_until(&f, NW, i + 1);
    w = i % NW;
    ASSERT_EQ(pc_dispatch_handed(f.d, (uint32_t)w + 1), i / NW + 1);
    conn = take_conn(f.ch[w][1], &peer);
    ASSERT_EQ(peer, local);
    check_connected(conn, c);
    close(conn);
    close(c);
  }
  ASSERT_EQ(pc_dispatch_pending(f.d, LID), 0);
  teardown(&f, NW);
  ASSERT_EQ(count_open_fds(), before);
}

/* A burst: the loop's copies are closed a run of fds at a time (nothing leaks,
 * nothing else is closed), and the nap that follows a burst never outlasts the
 * caller's timeout. */
static void test_burst(void) {
  struct fixture f;
  struct pc_event ev[8];
  int clients[31], i, conns = 0, before = count_open_fds();
  int64_t start;
  setup(&f, PC_SCHED_RR, NW);
  for (i = 0; i < 30; i++) clients[i] = client(f.port, 0, NULL);
  pump_until(&f, NW, 30);
  start = now_ns();
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 8), 0);
  ASSERT_LT(now_ns() - start, 500000000LL);
  clients[30] = client(f.port, 0, NULL);
  pump_until(&f, NW, 31);
  for (i = 0; i < NW; i++) {
    int conn;
    while (conns < 31 && (conn = take_conn(f.ch[i][1], NULL)) >= 0) {
      conns++;
      close(conn);
      if (pc_channel_wait_readable(f.ch[i][1], 0) != 0) break;
    }
  }
  ASSERT_EQ(conns, 31);
  for (i = 0; i < 31; i++) close(clients[i]);
  teardown(&f, NW);
  ASSERT_EQ(count_open_fds(), before);
}

/* Many connections in one wake (one accept batch, one sendmmsg per worker):
 * still an even rotation, and each worker sees one PC_MSG_CONN per connection. */
static void test_rr_batch(void) {
  struct fixture f;
  int clients[30], i;
  setup(&f, PC_SCHED_RR, NW);
  for (i = 0; i < 30; i++) clients[i] = client(f.port, 0, NULL);
  pump_until(&f, NW, 30);
  for (i = 0; i < NW; i++) {
    ASSERT_EQ(pc_dispatch_handed(f.d, (uint32_t)i + 1), 10);
    ASSERT_EQ(drain(f.ch[i][1]), 10);
  }
  for (i = 0; i < 30; i++) close(clients[i]);
  teardown(&f, NW);
}

static void test_least(void) {
  struct fixture f;
  int c;
  setup(&f, PC_SCHED_LEAST, NW);
  f.slots[0].inflight = 5;
  f.slots[1].inflight = 1;
  f.slots[2].inflight = 3;
  c = client(f.port, 0, NULL);
  pump_until(&f, NW, 1);
  ASSERT_EQ(pc_dispatch_handed(f.d, 2), 1); /* the lowest inflight */
  close(c);
  /* worker 2 now has 1 inflight + 1 queued = 2 < 3 < 5: it again */
  c = client(f.port, 0, NULL);
  pump_until(&f, NW, 2);
  ASSERT_EQ(pc_dispatch_handed(f.d, 2), 2);
  close(c);
  /* it takes both off its channel and reports them as connections: 1 + 2 = 3,
   * a tie with worker 3, broken in rr order (worker 3 is next after 2) */
  f.slots[1].handed = 2;
  f.slots[1].connections = 2;
  c = client(f.port, 0, NULL);
  pump_until(&f, NW, 3);
  ASSERT_EQ(pc_dispatch_handed(f.d, 3), 1);
  close(c);
  f.slots[0].inflight = 0; /* now worker 1 is the least loaded */
  c = client(f.port, 0, NULL);
  pump_until(&f, NW, 4);
  ASSERT_EQ(pc_dispatch_handed(f.d, 1), 1);
  close(c);
  teardown(&f, NW);
}

/* A burst in one wake: least counts what it queued to each worker, so the burst
 * spreads instead of all going to the worker that looked least loaded. */
static void test_least_burst(void) {
  struct fixture f;
  int clients[7], i;
  setup(&f, PC_SCHED_LEAST, NW);
  f.slots[1].inflight = 2;
  f.slots[2].inflight = 2;
  for (i = 0; i < 7; i++) clients[i] = client(f.port, 0, NULL);
  pump_until(&f, NW, 7);
  /* loads end at 4,4,3 in some order: worker 1 gets 3 or 4 */
  ASSERT_GE(pc_dispatch_handed(f.d, 1), 3);
  ASSERT(pc_dispatch_handed(f.d, 1) <= 4);
  ASSERT_GE(pc_dispatch_handed(f.d, 2), 1);
  ASSERT_GE(pc_dispatch_handed(f.d, 3), 1);
  for (i = 0; i < 7; i++) close(clients[i]);
  teardown(&f, NW);
}

static int worker_of_next(struct fixture *f, uint32_t from_ip, int64_t total) {
  int c = client(f->port, from_ip, NULL), i;
  int64_t before[NW];
  for (i = 0; i < NW; i++) before[i] = pc_dispatch_handed(f->d, (uint32_t)i + 1);
  pump_until(f, NW, total);
  close(c);
  for (i = 0; i < NW; i++)
    if (pc_dispatch_handed(f->d, (uint32_t)i + 1) != before[i]) return i + 1;
  ASSERT(0);
  return 0;
}

/* The same client IP (any port) always reaches the same worker; several IPs spread;
 * a full worker is skipped. */
static void test_sticky(void) {
  struct fixture f;
  int first[8], i, j, distinct = 0;
  int64_t total = 0;
  setup(&f, PC_SCHED_STICKY, NW);
  for (i = 0; i < 8; i++) {
    first[i] = worker_of_next(&f, 0x7f000001u + (uint32_t)i, ++total);
    for (j = 0; j < 3; j++) ASSERT_EQ(worker_of_next(&f, 0x7f000001u + (uint32_t)i, ++total), first[i]);
  }
  for (i = 0; i < 8; i++) {
    for (j = 0; j < i && first[j] != first[i]; j++) {
    }
    distinct += j == i;
  }
  ASSERT_GE(distinct, 2);
  fill(f.ch[first[0] - 1][0]);
  ASSERT(worker_of_next(&f, 0x7f000001u, ++total) != first[0]);
  teardown(&f, NW);
}

/* Worker 1's channel is full: rr goes on with 2 and 3, nothing lost. */
static void test_backpressure_skip(void) {
  struct fixture f;
  int clients[6], i;
  setup(&f, PC_SCHED_RR, NW);
  fill(f.ch[0][0]);
  for (i = 0; i < 6; i++) clients[i] = client(f.port, 0, NULL);
  pump_until(&f, NW, 6);
  ASSERT_EQ(pc_dispatch_handed(f.d, 1), 0);
  ASSERT_EQ(pc_dispatch_handed(f.d, 2), 3);
  ASSERT_EQ(pc_dispatch_handed(f.d, 3), 3);
  ASSERT_EQ(drain(f.ch[1][1]) + drain(f.ch[2][1]), 6);
  for (i = 0; i < 6; i++) close(clients[i]);
  teardown(&f, NW);
}

static int64_t cpu_ns(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
         ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* All channels full: the first connections are accepted and kept pending, later
 * ones wait in the backlog while the loop sleeps (the listener is not polled: no
 * spin on a readable backlog); once a worker drains, all of them arrive. */
static void test_backpressure_all_full(void) {
  struct fixture f;
  struct pc_event ev[8];
  int clients[8], i;
  int64_t t0, cpu0;
  setup(&f, PC_SCHED_RR, NW);
  for (i = 0; i < NW; i++) fill(f.ch[i][0]);
  for (i = 0; i < 5; i++) clients[i] = client(f.port, 0, NULL);
  ASSERT_EQ(pc_dispatch_run(f.d, 50000000, ev, 8), 0);
  ASSERT_EQ(total_handed(&f, NW), 0);
  ASSERT_EQ(pc_dispatch_pending(f.d, LID), 5);
  for (i = 5; i < 8; i++) clients[i] = client(f.port, 0, NULL);
  t0 = now_ns();
  cpu0 = cpu_ns();
  ASSERT_EQ(pc_dispatch_run(f.d, 200000000, ev, 8), 0);
  ASSERT_GE(now_ns() - t0, 190000000);
  ASSERT_LT(cpu_ns() - cpu0, 60000000); /* slept, did not spin */
  ASSERT_EQ(pc_dispatch_pending(f.d, LID), 5); /* the 3 others are in the backlog */
  ASSERT_EQ(total_handed(&f, NW), 0);
  drain(f.ch[1][1]); /* worker 2 catches up */
  pump_until(&f, NW, 8);
  ASSERT_EQ(pc_dispatch_handed(f.d, 2), 8);
  ASSERT_EQ(drain(f.ch[1][1]), 8);
  ASSERT_EQ(pc_dispatch_pending(f.d, LID), 0);
  /* and the listener is polled again */
  close(clients[0]);
  clients[0] = client(f.port, 0, NULL);
  pump_until(&f, NW, 9);
  for (i = 0; i < 8; i++) close(clients[i]);
  teardown(&f, NW);
}

/* No worker listening yet: connections wait; the first worker to listen gets them. */
static void test_worker_added_later(void) {
  struct fixture f;
  int c[2];
  setup(&f, PC_SCHED_RR, 0);
  c[0] = client(f.port, 0, NULL);
  c[1] = client(f.port, 0, NULL);
  {
    struct pc_event ev[4];
    ASSERT_EQ(pc_dispatch_run(f.d, 20000000, ev, 4), 0);
  }
  ASSERT_EQ(pc_channel_pair(f.ch[0]), 0);
  ASSERT_EQ(pc_dispatch_add_worker(f.d, 1, f.ch[0][0], NULL), 0);
  ASSERT_EQ(pc_dispatch_worker_listen(f.d, 1, LID), 0);
  ASSERT_EQ(pc_dispatch_worker_listen(f.d, 1, LID), 0);
  pump_until(&f, 1, 2);
  ASSERT_EQ(drain(f.ch[0][1]), 2);
  close(c[0]);
  close(c[1]);
  teardown(&f, 1);
}

/* Python's recovery path: worker 1 dies with connections queued; remove it, read
 * them back from its end, hand each to a live worker. */
static void test_hand_off(void) {
  struct fixture f;
  int clients[6], i, before;
  struct sockaddr_in a = {.sin_family = AF_INET};
  setup(&f, PC_SCHED_RR, NW);
  before = count_open_fds();
  for (i = 0; i < 6; i++) clients[i] = client(f.port, 0, NULL);
  pump_until(&f, NW, 6);
  ASSERT_EQ(pc_dispatch_remove_worker(f.d, 1), 0);
  ASSERT_EQ(pc_dispatch_remove_worker(f.d, 1), -ENOENT);
  ASSERT_EQ(pc_dispatch_handed(f.d, 1), -ENOENT);
  for (i = 0; i < 2; i++) {
    struct pc_conn_msg conn;
    uint32_t kind, length;
    uint64_t seq;
    int fds[PC_CHANNEL_MAX_FDS], nfds, rc;
    ASSERT_EQ(pc_channel_recv(f.ch[0][1], &kind, &seq, &conn, sizeof conn, &length, fds, &nfds), 0);
    ASSERT_EQ(seq, i + 1);
    rc = pc_dispatch_hand_off(f.d, conn.listener_id, fds[0], conn.addr, conn.addr_len);
    ASSERT(rc == 2 || rc == 3);
  }
  ASSERT_EQ(pc_dispatch_handed(f.d, 2) + pc_dispatch_handed(f.d, 3), 6);
  ASSERT_EQ(drain(f.ch[1][1]) + drain(f.ch[2][1]), 6);
  /* bad input leaves the fd with the caller */
  ASSERT_EQ(pc_dispatch_hand_off(f.d, 99, clients[0], NULL, 0), -ENOENT);
  ASSERT_EQ(pc_dispatch_hand_off(f.d, LID, clients[0], &a, 129), -EINVAL);
  ASSERT_GE(write(clients[0], "", 0), 0);
  /* every live worker full: queued, then sent once one drains */
  fill(f.ch[1][0]);
  fill(f.ch[2][0]);
  {
    int s[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    ASSERT_EQ(pc_dispatch_hand_off(f.d, LID, s[0], &a, sizeof a), -EAGAIN);
    ASSERT_EQ(pc_dispatch_pending(f.d, LID), 1);
    drain(f.ch[2][1]);
    pump_until(&f, NW, 7);
    ASSERT_EQ(pc_dispatch_handed(f.d, 3), 4);
    ASSERT_EQ(pc_dispatch_pending(f.d, LID), 0);
    ASSERT_EQ(drain(f.ch[2][1]), 1);
    close(s[1]);
  }
  drain(f.ch[1][1]);
  for (i = 0; i < 6; i++) close(clients[i]);
  ASSERT_EQ(count_open_fds(), before);
  teardown(&f, NW);
}

/* A removed worker gets nothing more; rr rotates over the others. */
static void test_remove_worker(void) {
  struct fixture f;
  int clients[4], i;
  setup(&f, PC_SCHED_RR, NW);
  ASSERT_EQ(pc_dispatch_remove_worker(f.d, 2), 0);
  for (i = 0; i < 4; i++) clients[i] = client(f.port, 0, NULL);
  {
    struct pc_event ev[4];
    int64_t deadline = now_ns() + 5000000000LL;
    while (pc_dispatch_handed(f.d, 1) + pc_dispatch_handed(f.d, 3) < 4) {
      ASSERT_GE(pc_dispatch_run(f.d, 10000000, ev, 4), 0);
      ASSERT(now_ns() < deadline);
    }
  }
  ASSERT_EQ(pc_dispatch_handed(f.d, 1), 2);
  ASSERT_EQ(pc_dispatch_handed(f.d, 3), 2);
  ASSERT_EQ(drain(f.ch[1][1]), 0);
  ASSERT_EQ(pc_dispatch_worker_listen(f.d, 2, LID), -ENOENT);
  /* unlisten: worker 1 keeps its channel but gets no more connections */
  ASSERT_EQ(pc_dispatch_worker_unlisten(f.d, 1, LID), 0);
  ASSERT_EQ(pc_dispatch_worker_unlisten(f.d, 1, LID), 0);
  ASSERT_EQ(pc_dispatch_worker_unlisten(f.d, 2, LID), -ENOENT);
  for (i = 0; i < 2; i++) {
    close(clients[i]);
    clients[i] = client(f.port, 0, NULL);
  }
  {
    struct pc_event ev[4];
    int64_t deadline = now_ns() + 5000000000LL;
    while (pc_dispatch_handed(f.d, 3) < 4) {
      ASSERT_GE(pc_dispatch_run(f.d, 10000000, ev, 4), 0);
      ASSERT(now_ns() < deadline);
    }
  }
  ASSERT_EQ(pc_dispatch_handed(f.d, 1), 2);
  ASSERT_EQ(pc_dispatch_remove_listener(f.d, LID), 0);
  ASSERT_EQ(pc_dispatch_remove_listener(f.d, LID), -ENOENT);
  for (i = 0; i < 4; i++) close(clients[i]);
  teardown(&f, NW);
}

static void test_events(void) {
  struct fixture f;
  struct pc_event ev[4];
  int p[2];
  char c;
  setup(&f, PC_SCHED_RR, NW);
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(pc_dispatch_watch(f.d, p[0], 77), 0);
  ASSERT_EQ(pc_dispatch_watch(f.d, p[0], 77), -EEXIST);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 0);
  ASSERT_EQ(write(p[1], "x", 1), 1);
  ASSERT_EQ(pc_dispatch_run(f.d, 1000000000, ev, 4), 1);
  ASSERT_EQ(ev[0].kind, PC_EVENT_FD);
  ASSERT_EQ(ev[0].id, 77);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 1); /* level-triggered until read */
  ASSERT_EQ(read(p[0], &c, 1), 1);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 0);
  ASSERT_EQ(write(p[1], "x", 1), 1);
  ASSERT_EQ(pc_dispatch_unwatch(f.d, p[0]), 0);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 0);

  /* a worker sends a message */
  ASSERT_EQ(pc_channel_send(f.ch[1][1], 16, 1, "hi", 2, NULL, 0), 0);
  ASSERT_EQ(pc_dispatch_run(f.d, 1000000000, ev, 4), 1);
  ASSERT_EQ(ev[0].kind, PC_EVENT_WORKER_READABLE);
  ASSERT_EQ(ev[0].id, 2);
  ASSERT_EQ(drain(f.ch[1][0]), 0);

  /* max_events bounds what is returned; the rest comes next call */
  ASSERT_EQ(pc_channel_send(f.ch[0][1], 16, 1, "a", 1, NULL, 0), 0);
  ASSERT_EQ(pc_channel_send(f.ch[2][1], 16, 1, "b", 1, NULL, 0), 0);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 1), 1);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 2);
  drain(f.ch[0][0]);
  drain(f.ch[2][0]);

  /* the worker's end closes: one HUP, then silence */
  close(f.ch[2][1]);
  f.ch[2][1] = -1;
  ASSERT_EQ(pc_dispatch_run(f.d, 1000000000, ev, 4), 1);
  ASSERT_EQ(ev[0].kind, PC_EVENT_WORKER_HUP);
  ASSERT_EQ(ev[0].id, 3);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 0);

  /* notify_writable: one event when a full channel drains */
  fill(f.ch[0][0]);
  ASSERT_EQ(pc_dispatch_notify_writable(f.d, 1), 0);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 0);
  drain(f.ch[0][1]);
  ASSERT_EQ(pc_dispatch_run(f.d, 1000000000, ev, 4), 1);
  ASSERT_EQ(ev[0].kind, PC_EVENT_WORKER_WRITABLE);
  ASSERT_EQ(ev[0].id, 1);
  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 4), 0);
  ASSERT_EQ(pc_dispatch_notify_writable(f.d, 3), -EPIPE);

  ASSERT_EQ(pc_dispatch_run(f.d, 0, ev, 0), -EINVAL);
  close(p[0]);
  close(p[1]);
  teardown(&f, NW);
}

static void test_timeout_and_bad_input(void) {
  struct pc_event ev[4];
  int err = 0;
  int64_t t0;
  struct pc_dispatch *d = pc_dispatch_new(99, &err);
  ASSERT(d == NULL);
  ASSERT_EQ(err, -EINVAL);
  d = pc_dispatch_new(PC_SCHED_RR, &err);
  ASSERT(d != NULL);
  t0 = now_ns();
  ASSERT_EQ(pc_dispatch_run(d, 30000000, ev, 4), 0);
  ASSERT_GE(now_ns() - t0, 30000000);
  ASSERT_LT(now_ns() - t0, 1000000000);
  ASSERT_EQ(pc_dispatch_set_sched(d, 3), -EINVAL);
  ASSERT_EQ(pc_dispatch_set_sched(d, PC_SCHED_STICKY), 0);
  ASSERT_EQ(pc_dispatch_worker_listen(d, 1, 1), -ENOENT);
  ASSERT_EQ(pc_dispatch_add_worker(d, 1, -1, NULL), -EINVAL);
  ASSERT_EQ(pc_dispatch_unwatch(d, 12345), -EBADF);
  pc_dispatch_free(d);
}

static void on_alarm(int sig) { (void)sig; }

/* A signal ends the wait with -EINTR (not retried inside). */
static void test_eintr(void) {
  struct sigaction sa;
  struct itimerval it = {{0, 0}, {0, 20000}};
  struct pc_event ev[4];
  struct pc_dispatch *d = pc_dispatch_new(PC_SCHED_RR, NULL);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART */
  ASSERT_EQ(sigaction(SIGALRM, &sa, NULL), 0);
  ASSERT_EQ(setitimer(ITIMER_REAL, &it, NULL), 0);
  ASSERT_EQ(pc_dispatch_run(d, 5000000000LL, ev, 4), -EINTR);
  signal(SIGALRM, SIG_DFL);
  pc_dispatch_free(d);
}

/* Across fork: three worker processes answer each connection with their id; under
 * rr the clients see 1,2,3,1,2,3. */
static void test_rr_across_fork(void) {
  struct fixture f;
  pid_t pids[NW];
  int i, status;
  setup(&f, PC_SCHED_RR, NW);
  for (i = 0; i < NW; i++) {
    pids[i] = fork();
    ASSERT_GE(pids[i], 0);
    if (pids[i] == 0) {
      int k;
      for (k = 0; k < 2; k++) {
        int conn;
        char id = (char)('1' + i);
        if (pc_channel_wait_readable(f.ch[i][1], 5000000000LL) != 0) _exit(2);
        conn = take_conn(f.ch[i][1], NULL);
        if (write(conn, &id, 1) != 1) _exit(3);
        close(conn);
      }
      _exit(0);
    }
  }
  for (i = 0; i < 2 * NW; i++) {
    char got = 0;
    int c = client(f.port, 0, NULL);
    pump_until(&f, NW, i + 1);
    ASSERT_EQ(read(c, &got, 1), 1);
    ASSERT_EQ(got, '1' + i % NW);
    close(c);
  }
  for (i = 0; i < NW; i++) {
    ASSERT_EQ(waitpid(pids[i], &status, 0), pids[i]);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  teardown(&f, NW);
}

/* pc_score_record: one count per response in its status class and its duration's
 * bucket (bounds inclusive), the sum in microseconds; bounds ascend, the last is open. */
static void test_score_record(void) {
  struct pc_score_slot slot;
  uint32_t i, buckets = sizeof slot.duration_buckets / sizeof slot.duration_buckets[0];
  uint64_t total = 0;
  memset(&slot, 0, sizeof slot);
  for (i = 0; i + 1 < buckets; i++) ASSERT(pc_score_bucket_bound_us(i) < pc_score_bucket_bound_us(i + 1));
  ASSERT(pc_score_bucket_bound_us(buckets - 1) == UINT64_MAX);
  ASSERT_EQ(pc_score_bucket_bound_us(buckets), 0);
  pc_score_record(&slot, 200, 0);
  pc_score_record(&slot, 204, 1000);  /* on the first bound: still the first bucket */
  pc_score_record(&slot, 404, 1001);
  pc_score_record(&slot, 503, 20000000);
  pc_score_record(&slot, 99, 5);
  pc_score_record(&slot, 600, 5);
  ASSERT_EQ(slot.status_classes[1], 2);
  ASSERT_EQ(slot.status_classes[3], 1);
  ASSERT_EQ(slot.status_classes[4], 1);
  ASSERT_EQ(slot.status_classes[5], 2);
  ASSERT_EQ(slot.status_classes[0], 0);
  ASSERT_EQ(slot.duration_buckets[0], 4);
  ASSERT_EQ(slot.duration_buckets[1], 1);
  ASSERT_EQ(slot.duration_buckets[buckets - 1], 1);
  for (i = 0; i < buckets; i++) total += slot.duration_buckets[i];
  ASSERT_EQ(total, 6);
  ASSERT(slot.duration_us == 0 + 1000 + 1001 + 20000000 + 5 + 5);
  ASSERT_EQ(slot.requests, 0); /* counted apart (request_finished or a published total) */
}

/* pc_score_record_since reads CLOCK_MONOTONIC itself (its start in seconds, as
 * Python's time.monotonic()): a request begun 30 ms ago lands in the 50 ms bucket
 * (above 25 ms) unless this test was descheduled for seconds; a start in the future,
 * or NaN, counts as 0 µs. request_started/finished move inflight and requests;
 * request_started_at also returns the clock, and request_finished_since ends a
 * request and records it. */
static void test_score_record_since_and_request_counts(void) {
  struct pc_score_slot slot;
  double now_s = (double)now_ns() / 1e9;
  memset(&slot, 0, sizeof slot);
  pc_score_record_since(&slot, 200, now_s - 0.030);
  ASSERT_EQ(slot.status_classes[1], 1);
  ASSERT(slot.duration_us >= 30000 && slot.duration_us < 5000000);
  ASSERT_EQ(slot.duration_buckets[0] + slot.duration_buckets[1] + slot.duration_buckets[2] +
            slot.duration_buckets[3] + slot.duration_buckets[4], 0);
  pc_score_record_since(&slot, 500, now_s + 60.0);
  ASSERT_EQ(slot.duration_buckets[0], 1);
  ASSERT_EQ(slot.status_classes[4], 1);
  pc_score_record_since(&slot, 200, NAN);
  ASSERT_EQ(slot.duration_buckets[0], 2);
  pc_score_record_since(&slot, 200, -1e300); /* over any duration: the last bucket */
  ASSERT_EQ(slot.duration_buckets[13], 1);
  uint64_t sum_before = slot.duration_us;
  double first_s = pc_score_request_started_at(&slot);
  ASSERT(first_s >= now_s && first_s < now_s + 5.0);
  pc_score_request_started(&slot);
  ASSERT_EQ(slot.inflight, 2);
  pc_score_request_finished(&slot);
  ASSERT_EQ(slot.inflight, 1);
  ASSERT_EQ(slot.requests, 1);
  pc_score_request_finished_since(&slot, 404, first_s - 0.030);
  ASSERT_EQ(slot.inflight, 0);
  ASSERT_EQ(slot.requests, 2);
  ASSERT_EQ(slot.status_classes[3], 1);
  ASSERT(slot.duration_us - sum_before >= 30000);
  ASSERT_EQ(slot.duration_buckets[0] + slot.duration_buckets[1] + slot.duration_buckets[2] +
            slot.duration_buckets[3] + slot.duration_buckets[4], 2); /* the 500 and the NaN, at 0 µs */
}

int main(void) {
  signal(SIGPIPE, SIG_DFL);
  alarm(50); /* whatever happens, this test ends */
  RUN_TEST(test_score_record);
  RUN_TEST(test_score_record_since_and_request_counts);
  RUN_TEST(test_rr_sequence);
  RUN_TEST(test_rr_batch);
  RUN_TEST(test_burst);
  RUN_TEST(test_least);
  RUN_TEST(test_least_burst);
  RUN_TEST(test_sticky);
  RUN_TEST(test_backpressure_skip);
  RUN_TEST(test_backpressure_all_full);
  RUN_TEST(test_worker_added_later);
  RUN_TEST(test_hand_off);
  RUN_TEST(test_remove_worker);
  RUN_TEST(test_events);
  RUN_TEST(test_timeout_and_bad_input);
  RUN_TEST(test_eintr);
  alarm(30); /* test_eintr's timer replaced the first alarm */
  RUN_TEST(test_rr_across_fork);
  return 0;
}
