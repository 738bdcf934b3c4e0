/* The primary's dispatch loop (Linux: epoll, accept4, sendmmsg).
 *
 * Per wake and listener: accept4 up to BATCH connections, choose a worker for each
 * by policy, send one PC_MSG_CONN per connection with one sendmmsg per worker,
 * close our copies. A worker whose channel returns EAGAIN is "full": the loop
 * watches its EPOLLOUT (the kernel reports it once less than a quarter of the send
 * buffer is queued, so there is hysteresis and no spin) and skips it meanwhile.
 * A listener with no worker able to take a connection is taken out of epoll: its
 * connections wait in the kernel's backlog, and one already accepted waits in the
 * listener's pending queue.
 */
#include "channel_internal.h"
#include "internal.h"
#include "pc_dispatch.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* Workers write the slot, the primary reads it: pin the layout. */
PC_STATIC_ASSERT(sizeof(struct pc_score_slot) == 256, "pc_score_slot is 256 bytes");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, heartbeat_ns) == 8, "heartbeat_ns at 8");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, requests) == 16, "requests at 16");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, inflight) == 24, "inflight at 24");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, connections) == 28, "connections at 28");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, handed) == 32, "handed at 32");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, duration_us) == 40, "duration_us at 40");
PC_STATIC_ASSERT(offsetof(struct pc_score_slot, duration_buckets) == 96, "duration_buckets at 96");
PC_STATIC_ASSERT(sizeof(struct pc_event) == 8, "pc_event is 8 bytes");

enum {
  BATCH = 64,               /* accepts per listener per wake; messages per sendmmsg */
  EPOLL_EVENTS = 64,
  EMFILE_PAUSE_NS = 100000000,
  /* Coalescing. Each wake of a loop asleep in epoll_wait is paid by the client's
   * connect() (the listener's wake-up of another CPU: on a 2-vCPU VM about as much
   * as the rest of the hand-off). When one wake found BURST or more connections
   * waiting, they arrive faster than we wake, so the loop naps COALESCE_NS first
   * and then takes what queued meanwhile in one batch: a connection arriving in a
   * burst waits at most that long; a lone client (one per wake) never does. */
  BURST = 2,
  COALESCE_NS = 1000000,
};

/* epoll_event.data.u64 = tag << 32 | id */
enum { TAG_LISTENER = 1, TAG_WORKER = 2, TAG_WATCH = 3 };

struct conn {
  int fd;
  uint32_t addr_len;
  struct sockaddr_storage addr;
};

struct worker {
  uint32_t id;
  int fd;
  struct pc_score_slot *slot;
  uint64_t handed;
  uint64_t batched;      /* chosen in the batch being built, not sent yet */
  uint32_t epoll_events; /* what it is registered for; 0 = not in epoll */
  int full;              /* last send got EAGAIN; waiting for EPOLLOUT */
  int dead;              /* hung up or EPIPE: never chosen again */
  int want_writable;     /* Python asked for one PC_EVENT_WORKER_WRITABLE */
};

struct listener {
  uint32_t id;
  int fd;
  int polled;  /* registered in epoll */
  int broken;  /* accept4 failed for good (e.g. shut down): never polled again */
  size_t rr;   /* index into members of the next worker to try */
  struct worker **members;
  size_t nmembers, cap_members;
  struct conn *pending; /* FIFO, oldest first */
  size_t npending, cap_pending;
};

struct pc_dispatch {
  int epfd;
  int sched;
  struct worker **workers;
  size_t nworkers, cap_workers;
  struct listener **listeners;
  size_t nlisteners, cap_listeners;
  int64_t accept_paused_until; /* CLOCK_MONOTONIC ns after EMFILE; 0 = not paused */
  size_t last_accepted;        /* connections the last wake accepted */
  /* scratch for one batch */
  struct conn batch[BATCH];
  struct worker *owner[BATCH];
  struct mmsghdr msgs[BATCH];
  struct pc__outmsg out[BATCH];
  struct pc_conn_msg payload[BATCH];
  size_t index[BATCH];
  int closing[BATCH];
};

static uint64_t tag(uint32_t kind, uint32_t id) { return (uint64_t)kind << 32 | id; }

/* Grow an array of elem_size elements to hold one more; 0 or -ENOMEM. */
static int reserve(void **array, size_t *cap, size_t count, size_t elem_size) {
  size_t new_cap;
  void *p;
  if (count < *cap) return 0;
  new_cap = *cap ? *cap * 2 : 8;
  p = realloc(*array, new_cap * elem_size);
  if (p == NULL) return -ENOMEM;
  *array = p;
  *cap = new_cap;
  return 0;
}

static struct worker *find_worker(struct pc_dispatch *d, uint32_t id, size_t *at) {
  size_t i;
  for (i = 0; i < d->nworkers; i++)
    if (d->workers[i]->id == id) {
      if (at) *at = i;
      return d->workers[i];
    }
  return NULL;
}

static struct listener *find_listener(struct pc_dispatch *d, uint32_t id, size_t *at) {
  size_t i;
  for (i = 0; i < d->nlisteners; i++)
    if (d->listeners[i]->id == id) {
      if (at) *at = i;
      return d->listeners[i];
    }
  return NULL;
}

static int is_member(const struct listener *l, const struct worker *w) {
  size_t i;
  for (i = 0; i < l->nmembers; i++)
    if (l->members[i] == w) return 1;
  return 0;
}

static int available(const struct worker *w) { return !w->full && !w->dead; }

/* ---- epoll registration --------------------------------------------------- */

static int worker_set_events(struct pc_dispatch *d, struct worker *w) {
  struct epoll_event ev = {0};
  uint32_t want = w->dead ? 0 : EPOLLIN | (w->full || w->want_writable ? EPOLLOUT : 0);
  int op;
  if (want == w->epoll_events) return 0;
  ev.events = want;
  ev.data.u64 = tag(TAG_WORKER, w->id);
  op = want == 0 ? EPOLL_CTL_DEL : w->epoll_events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  if (epoll_ctl(d->epfd, op, w->fd, &ev) < 0 && op != EPOLL_CTL_DEL) return -errno;
  w->epoll_events = want;
  return 0;
}

/* Poll a listener only when a connection accepted now could be sent at once: no
 * older connection waits, some member can take it, and we are not out of fds. */
static void listener_update(struct pc_dispatch *d, struct listener *l) {
  struct epoll_event ev = {0};
  int want = 0;
  size_t i;
  if (l->npending == 0 && d->accept_paused_until == 0 && !l->broken)
    for (i = 0; i < l->nmembers && !want; i++) want = available(l->members[i]);
  if (want == l->polled) return;
  ev.events = EPOLLIN;
  ev.data.u64 = tag(TAG_LISTENER, l->id);
  /* DEL rather than MOD to 0 events: epoll would still report EPOLLHUP/EPOLLERR of
   * a listener we mean to ignore. A failed ADD leaves it unpolled until the next
   * update: it cannot be fixed here, and nothing is lost meanwhile. */
  if (epoll_ctl(d->epfd, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, l->fd, &ev) == 0 || !want) l->polled = want;
}

/* ---- policies -------------------------------------------------------------- */

/* What least compares: what the worker reports plus what is queued to it (sent
 * and not yet taken, or chosen in this batch). */
static uint64_t load_of(const struct worker *w) {
  uint64_t load = w->handed;
  if (w->slot != NULL) {
    /* relaxed: a scheduling hint; nothing else is read through these values */
    uint64_t taken = atomic_load_explicit((_Atomic uint64_t *)&w->slot->handed, memory_order_relaxed);
    load = (taken < w->handed ? w->handed - taken : 0) +
           atomic_load_explicit((_Atomic uint32_t *)&w->slot->inflight, memory_order_relaxed) +
           atomic_load_explicit((_Atomic uint32_t *)&w->slot->connections, memory_order_relaxed);
  }
  return load + w->batched;
}

/* FNV-1a over the client's IP, not its port; an IPv4-mapped IPv6 address hashes as
 * the IPv4 one, so a dual-stack listener maps a client the same either way. */
static uint32_t client_hash(const struct conn *c) {
  const uint8_t *p = (const uint8_t *)&c->addr;
  size_t n = c->addr_len, i;
  uint32_t h = 2166136261u;
  if (c->addr.ss_family == AF_INET && c->addr_len >= sizeof(struct sockaddr_in)) {
    p = (const uint8_t *)&((const struct sockaddr_in *)&c->addr)->sin_addr;
    n = 4;
  } else if (c->addr.ss_family == AF_INET6 && c->addr_len >= sizeof(struct sockaddr_in6)) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)&c->addr)->sin6_addr;
    p = a->s6_addr;
    n = 16;
    if (IN6_IS_ADDR_V4MAPPED(a)) p += 12, n = 4;
  }
  for (i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

/* The worker for one connection, or NULL when no member can take it. */
static struct worker *choose(struct pc_dispatch *d, struct listener *l, const struct conn *c) {
  size_t n = l->nmembers, start, i, best = SIZE_MAX;
  uint64_t best_load = UINT64_MAX;
  if (n == 0) return NULL;
  start = d->sched == PC_SCHED_STICKY ? client_hash(c) % n : l->rr % n;
  for (i = 0; i < n; i++) {
    size_t at = (start + i) % n;
    struct worker *w = l->members[at];
    uint64_t load;
    if (!available(w)) continue;
    if (d->sched != PC_SCHED_LEAST) {
      best = at;
      break;
    }
    load = load_of(w);
    if (load < best_load) best_load = load, best = at;
  }
  if (best == SIZE_MAX) return NULL;
  if (d->sched != PC_SCHED_STICKY) l->rr = best + 1;
  return l->members[best];
}

/* Close fds[0..n) (sorted in place): one close_range per run of consecutive
 * numbers. A batch accepted together usually got consecutive fds (the kernel
 * hands out the lowest free ones), so this is one syscall per batch instead of
 * one per connection. */
static void close_all(int *fds, size_t n) {
  size_t i, j;
  for (i = 1; i < n; i++) /* insertion sort: n <= BATCH, usually sorted already */
    for (j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
      int t = fds[j];
      fds[j] = fds[j - 1];
      fds[j - 1] = t;
    }
  for (i = 0; i < n; i = j) {
    for (j = i + 1; j < n && fds[j] == fds[j - 1] + 1;) j++;
    if (j - i == 1 || close_range((unsigned)fds[i], (unsigned)fds[j - 1], 0) < 0)
      for (; i < j; i++) close(fds[i]); /* one fd, or a kernel before 5.9 (ENOSYS) */
  }
}

/* ---- sending --------------------------------------------------------------- */

/* Send conns[index[0..n)] to w in one sendmmsg (more if a signal splits it).
 * Returns how many went, a prefix; marks w full or dead when the rest could not.
 * The caller closes the fds of those sent. */
static size_t send_to_worker(struct pc_dispatch *d, struct listener *l, struct worker *w,
                             struct conn *conns, const size_t *index, size_t n) {
  size_t i, sent = 0;
  for (i = 0; i < n; i++) {
    struct conn *c = &conns[index[i]];
    struct pc_conn_msg *p = &d->payload[i];
    p->listener_id = l->id;
    p->addr_len = c->addr_len;
    memcpy(p->addr, &c->addr, c->addr_len);
    memset(p->addr + c->addr_len, 0, sizeof p->addr - c->addr_len);
    /* cannot fail: one valid fd, a fixed-size payload */
    pc__channel_prepare(&d->msgs[i].msg_hdr, &d->out[i], PC_MSG_CONN, w->handed + i + 1, p, sizeof *p,
                        &c->fd, 1);
  }
  while (sent < n) {
    int r = sendmmsg(w->fd, d->msgs + sent, (unsigned)(n - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      sent += (size_t)r;
    } else if (r == 0 || errno != EINTR) {
      /* ETOOMANYREFS: more fds in flight than our RLIMIT_NOFILE (unix(7)); the
       * worker is fine, so wait as for a full channel rather than drop it. */
      if (r < 0 && (pc__channel_send_error(errno) == -EAGAIN || errno == ETOOMANYREFS))
        w->full = 1;
      else
        w->dead = 1; /* EPIPE, or an fd Python closed under us: stop choosing it */
      worker_set_events(d, w);
      break;
    }
  }
  w->handed += sent;
  return sent;
}

/* Send conns[0..n) to workers of l by policy and close the loop's copies of
 * those sent. Returns how many could not be sent; those are moved, in order, to
 * the front of conns. Each round sends something or marks a worker full/dead, so
 * it ends. */
static size_t dispatch_conns(struct pc_dispatch *d, struct listener *l, struct conn *conns, size_t n) {
  while (n > 0) {
    size_t assigned = 0, i, j, left = 0, nclosing = 0;
    for (i = 0; i < n; i++) {
      d->owner[i] = choose(d, l, &conns[i]);
      if (d->owner[i] == NULL) break;
      d->owner[i]->batched++;
      assigned++;
    }
    if (assigned == 0) break;
    /* one sendmmsg per worker, in order of first appearance */
    for (i = 0; i < assigned; i++) {
      struct worker *w = d->owner[i];
      size_t count = 0, sent;
      if (w == NULL) continue;
      w->batched = 0;
      for (j = i; j < assigned; j++)
        if (d->owner[j] == w) d->index[count++] = j;
      sent = send_to_worker(d, l, w, conns, d->index, count);
      for (j = 0; j < count; j++) d->owner[d->index[j]] = NULL;
      for (j = 0; j < sent; j++) {
        d->closing[nclosing++] = conns[d->index[j]].fd;
        conns[d->index[j]].fd = -1;
      }
    }
    close_all(d->closing, nclosing);
    for (i = 0; i < n; i++)
      if (conns[i].fd >= 0) conns[left++] = conns[i];
    n = left;
  }
  return n;
}

static int pending_push(struct listener *l, const struct conn *conns, size_t n) {
  if (l->npending + n > l->cap_pending) {
    size_t cap = l->cap_pending ? l->cap_pending : BATCH;
    struct conn *p;
    while (cap < l->npending + n) cap *= 2;
    p = realloc(l->pending, cap * sizeof *p);
    if (p == NULL) return -ENOMEM;
    l->pending = p;
    l->cap_pending = cap;
  }
  memcpy(l->pending + l->npending, conns, n * sizeof *conns);
  l->npending += n;
  return 0;
}

/* Send what waits in l's pending queue, oldest first, while workers take it. */
static void pending_flush(struct pc_dispatch *d, struct listener *l) {
  while (l->npending > 0) {
    size_t chunk = l->npending < BATCH ? l->npending : BATCH;
    size_t left = dispatch_conns(d, l, l->pending, chunk);
    memmove(l->pending + left, l->pending + chunk, (l->npending - chunk) * sizeof *l->pending);
    l->npending -= chunk - left;
    if (left > 0) break;
  }
}

/* Something may have become able to take connections: flush and re-poll the
 * listeners w serves (all of them when w is NULL). */
static void listeners_wake(struct pc_dispatch *d, struct worker *w) {
  size_t i;
  for (i = 0; i < d->nlisteners; i++) {
    struct listener *l = d->listeners[i];
    if (w != NULL && !is_member(l, w)) continue;
    pending_flush(d, l);
    listener_update(d, l);
  }
}

/* ---- accepting ------------------------------------------------------------- */

static size_t accept_batch(struct pc_dispatch *d, struct listener *l) {
  size_t n = 0, left, tries;
  /* bounded: a run of per-connection errors cannot keep us here */
  for (tries = 0; n < BATCH && tries < 2 * BATCH; tries++) {
    struct conn *c = &d->batch[n];
    socklen_t len = sizeof c->addr;
    int fd = accept4(l->fd, (struct sockaddr *)&c->addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      c->fd = fd;
      c->addr_len = len <= sizeof c->addr ? (uint32_t)len : (uint32_t)sizeof c->addr;
      n++;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      /* The connection stays in the backlog and the listener stays readable: stop
       * polling for a while instead of waking for it in a loop. */
      d->accept_paused_until = pc__deadline(EMFILE_PAUSE_NS);
      break;
    }
    /* ECONNABORTED and the network errors accept4 passes on (accept(2)) concern
     * one connection: go on. EAGAIN: drained. Anything else on the first accept
     * (EINVAL after shutdown(), EBADF) would report readable forever. */
    if (errno == ECONNABORTED || errno == EPROTO || errno == EPERM || errno == ENETDOWN ||
        errno == ENOPROTOOPT || errno == EHOSTDOWN || errno == ENONET || errno == EHOSTUNREACH ||
        errno == EOPNOTSUPP || errno == ENETUNREACH)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK && n == 0) l->broken = 1;
    break;
  }
  left = dispatch_conns(d, l, d->batch, n);
  if (left > 0 && pending_push(l, d->batch, left) < 0) {
    /* Out of memory for the queue: the only way out left is to refuse them. */
    size_t i;
    for (i = 0; i < left; i++) close(d->batch[i].fd);
  }
  return n;
}

/* ---- the API ---------------------------------------------------------------- */

static int sched_valid(int sched) {
  return sched == PC_SCHED_RR || sched == PC_SCHED_LEAST || sched == PC_SCHED_STICKY;
}

struct pc_dispatch *pc_dispatch_new(int sched, int *err) {
  struct pc_dispatch *d;
  int dummy;
  if (err == NULL) err = &dummy;
  if (!sched_valid(sched)) {
    *err = -EINVAL;
    return NULL;
  }
  d = calloc(1, sizeof *d);
  if (d == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  d->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (d->epfd < 0) {
    *err = -errno;
    free(d);
    return NULL;
  }
  d->sched = sched;
  *err = 0;
  return d;
}

static void listener_free(struct listener *l) {
  size_t i;
  for (i = 0; i < l->npending; i++) close(l->pending[i].fd);
  free(l->pending);
  free(l->members);
  free(l);
}

void pc_dispatch_free(struct pc_dispatch *d) {
  size_t i;
  if (d == NULL) return;
  close(d->epfd);
  for (i = 0; i < d->nlisteners; i++) listener_free(d->listeners[i]);
  for (i = 0; i < d->nworkers; i++) free(d->workers[i]);
  free(d->listeners);
  free(d->workers);
  free(d);
}

int pc_dispatch_set_sched(struct pc_dispatch *d, int sched) {
  if (d == NULL || !sched_valid(sched)) return -EINVAL;
  d->sched = sched;
  return 0;
}

int pc_dispatch_add_listener(struct pc_dispatch *d, uint32_t listener_id, int fd) {
  struct listener *l;
  if (d == NULL || fd < 0) return -EINVAL;
  if (find_listener(d, listener_id, NULL)) return -EEXIST;
  if (reserve((void **)&d->listeners, &d->cap_listeners, d->nlisteners, sizeof *d->listeners) < 0)
    return -ENOMEM;
  l = calloc(1, sizeof *l);
  if (l == NULL) return -ENOMEM;
  l->id = listener_id;
  l->fd = fd;
  d->listeners[d->nlisteners++] = l;
  return 0;
}

int pc_dispatch_remove_listener(struct pc_dispatch *d, uint32_t listener_id) {
  size_t at;
  struct listener *l;
  if (d == NULL) return -EINVAL;
  l = find_listener(d, listener_id, &at);
  if (l == NULL) return -ENOENT;
  if (l->polled) epoll_ctl(d->epfd, EPOLL_CTL_DEL, l->fd, NULL);
  d->listeners[at] = d->listeners[--d->nlisteners];
  listener_free(l);
  return 0;
}

int pc_dispatch_add_worker(struct pc_dispatch *d, uint32_t worker_id, int channel_fd,
                           struct pc_score_slot *slot) {
  struct worker *w;
  int rc;
  if (d == NULL || channel_fd < 0) return -EINVAL;
  if (find_worker(d, worker_id, NULL)) return -EEXIST;
  if (reserve((void **)&d->workers, &d->cap_workers, d->nworkers, sizeof *d->workers) < 0) return -ENOMEM;
  w = calloc(1, sizeof *w);
  if (w == NULL) return -ENOMEM;
  w->id = worker_id;
  w->fd = channel_fd;
  w->slot = slot;
  rc = worker_set_events(d, w);
  if (rc < 0) {
    free(w);
    return rc;
  }
  d->workers[d->nworkers++] = w;
  return 0;
}

/* The worker and listener named by a (un)listen call: 0, -EINVAL or -ENOENT. */
static int find_pair(struct pc_dispatch *d, uint32_t worker_id, uint32_t listener_id,
                     struct worker **w, struct listener **l) {
  if (d == NULL) return -EINVAL;
  *w = find_worker(d, worker_id, NULL);
  *l = find_listener(d, listener_id, NULL);
  return *w == NULL || *l == NULL ? -ENOENT : 0;
}

int pc_dispatch_worker_listen(struct pc_dispatch *d, uint32_t worker_id, uint32_t listener_id) {
  struct worker *w;
  struct listener *l;
  int rc = find_pair(d, worker_id, listener_id, &w, &l);
  if (rc < 0) return rc;
  if (is_member(l, w)) return 0;
  if (reserve((void **)&l->members, &l->cap_members, l->nmembers, sizeof *l->members) < 0) return -ENOMEM;
  l->members[l->nmembers++] = w;
  pending_flush(d, l);
  listener_update(d, l);
  return 0;
}

/* Returns 1 when w was a member of l, else 0. */
static int listener_drop_member(struct pc_dispatch *d, struct listener *l, struct worker *w) {
  size_t j;
  for (j = 0; j < l->nmembers; j++) {
    if (l->members[j] != w) continue;
    memmove(l->members + j, l->members + j + 1, (l->nmembers - j - 1) * sizeof *l->members);
    l->nmembers--;
    if (l->rr > j) l->rr--; /* keep the rotation where it was */
    listener_update(d, l);
    return 1;
  }
  return 0;
}

int pc_dispatch_worker_unlisten(struct pc_dispatch *d, uint32_t worker_id, uint32_t listener_id) {
  struct worker *w;
  struct listener *l;
  int rc = find_pair(d, worker_id, listener_id, &w, &l);
  if (rc < 0) return rc;
  listener_drop_member(d, l, w);
  return 0;
}

int pc_dispatch_remove_worker(struct pc_dispatch *d, uint32_t worker_id) {
  size_t at, i;
  struct worker *w;
  if (d == NULL) return -EINVAL;
  w = find_worker(d, worker_id, &at);
  if (w == NULL) return -ENOENT;
  w->dead = 1;
  worker_set_events(d, w);
  for (i = 0; i < d->nlisteners; i++) listener_drop_member(d, d->listeners[i], w);
  d->workers[at] = d->workers[--d->nworkers];
  free(w);
  return 0;
}

int pc_dispatch_notify_writable(struct pc_dispatch *d, uint32_t worker_id) {
  struct worker *w;
  if (d == NULL) return -EINVAL;
  w = find_worker(d, worker_id, NULL);
  if (w == NULL) return -ENOENT;
  if (w->dead) return -EPIPE;
  w->want_writable = 1;
  return worker_set_events(d, w);
}

int pc_dispatch_watch(struct pc_dispatch *d, int fd, uint32_t token) {
  struct epoll_event ev = {0};
  if (d == NULL || fd < 0) return -EINVAL;
  ev.events = EPOLLIN;
  ev.data.u64 = tag(TAG_WATCH, token);
  return epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int pc_dispatch_unwatch(struct pc_dispatch *d, int fd) {
  if (d == NULL || fd < 0) return -EINVAL;
  return epoll_ctl(d->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int pc_dispatch_hand_off(struct pc_dispatch *d, uint32_t listener_id, int conn_fd, const void *addr,
                         uint32_t addr_len) {
  struct listener *l;
  struct conn c;
  size_t index = 0;
  struct worker *w;
  if (d == NULL || conn_fd < 0 || addr_len > sizeof c.addr || (addr == NULL && addr_len > 0)) return -EINVAL;
  l = find_listener(d, listener_id, NULL);
  if (l == NULL) return -ENOENT;
  memset(&c, 0, sizeof c);
  c.fd = conn_fd;
  c.addr_len = addr_len;
  if (addr_len > 0) memcpy(&c.addr, addr, addr_len);
  /* behind older pending connections, not ahead of them */
  while (l->npending == 0 && (w = choose(d, l, &c)) != NULL)
    if (send_to_worker(d, l, w, &c, &index, 1) == 1) {
      close(conn_fd);
      return (int)w->id;
    }
  if (pending_push(l, &c, 1) < 0) return -ENOMEM;
  pending_flush(d, l);
  listener_update(d, l);
  return -EAGAIN;
}

int64_t pc_dispatch_handed(struct pc_dispatch *d, uint32_t worker_id) {
  struct worker *w;
  if (d == NULL) return -EINVAL;
  w = find_worker(d, worker_id, NULL);
  return w == NULL ? -ENOENT : (int64_t)w->handed;
}

int64_t pc_dispatch_pending(struct pc_dispatch *d, uint32_t listener_id) {
  struct listener *l;
  if (d == NULL) return -EINVAL;
  l = find_listener(d, listener_id, NULL);
  return l == NULL ? -ENOENT : (int64_t)l->npending;
}

/* A worker channel's events: EPOLLOUT is ours (a full channel drained); the rest
 * is Python's. Returns how many events were written (0 or 1). */
static int worker_event(struct pc_dispatch *d, struct worker *w, uint32_t revents, struct pc_event *out,
                        int room) {
  if (revents & (EPOLLHUP | EPOLLERR)) {
    if (room == 0) return 0; /* level-triggered: reported next call */
    w->dead = 1;             /* once: stop watching so a hung-up fd cannot spin */
    worker_set_events(d, w);
    listeners_wake(d, w);    /* re-evaluate: it may have been the last available */
    out->kind = PC_EVENT_WORKER_HUP;
    out->id = w->id;
    return 1;
  }
  if ((revents & EPOLLOUT) && (w->full || w->want_writable)) {
    int notify = w->want_writable && room > 0;
    w->full = 0;
    if (notify) w->want_writable = 0;
    worker_set_events(d, w);
    listeners_wake(d, w);
    if (notify) {
      out->kind = PC_EVENT_WORKER_WRITABLE;
      out->id = w->id;
      return 1 + worker_event(d, w, revents & ~(uint32_t)EPOLLOUT, out + 1, room - 1);
    }
  }
  if ((revents & EPOLLIN) && room > 0) {
    out->kind = PC_EVENT_WORKER_READABLE;
    out->id = w->id;
    return 1;
  }
  return 0;
}

static int epoll_timeout_ms(int64_t left_ns) {
  if (left_ns < 0) return -1;
  left_ns = (left_ns + 999999) / 1000000; /* round up: never wake early and spin */
  return left_ns > INT_MAX ? INT_MAX : (int)left_ns;
}

int pc_dispatch_run(struct pc_dispatch *d, int64_t timeout_ns, struct pc_event *events, int max_events) {
  struct epoll_event evs[EPOLL_EVENTS];
  int64_t deadline = pc__deadline(timeout_ns);
  if (d == NULL || events == NULL || max_events < 1) return -EINVAL;
  for (;;) {
    int64_t left = pc__remaining(deadline);
    int n, i, count = 0;
    if (d->accept_paused_until != 0) {
      int64_t pause_left = pc__remaining(d->accept_paused_until);
      if (pause_left == 0) {
        d->accept_paused_until = 0;
        listeners_wake(d, NULL);
      } else if (left < 0 || pause_left < left) {
        left = pause_left;
      }
    }
    if (d->last_accepted >= BURST && left != 0) {
      /* Connections come in bursts: nap, off every wait queue, so that the next
       * ones queue up without waking us (see COALESCE_NS), then take them all. */
      int64_t nap = left > 0 && left < COALESCE_NS ? left : COALESCE_NS;
      struct timespec ts = {0, (long)nap};
      if (nanosleep(&ts, NULL) < 0) return -errno; /* -EINTR: Python runs its handlers */
      n = epoll_wait(d->epfd, evs, EPOLL_EVENTS, 0);
    } else {
      n = epoll_wait(d->epfd, evs, EPOLL_EVENTS, epoll_timeout_ms(left));
    }
    d->last_accepted = 0;
    if (n < 0) return -errno; /* -EINTR included: Python runs its handlers */
    /* Channels first, so that a worker drained in this wake can take connections
     * accepted in it. */
    for (i = 0; i < n; i++) {
      uint32_t kind = (uint32_t)(evs[i].data.u64 >> 32), id = (uint32_t)evs[i].data.u64;
      if (kind == TAG_WORKER) {
        struct worker *w = find_worker(d, id, NULL);
        if (w != NULL) count += worker_event(d, w, evs[i].events, events + count, max_events - count);
      } else if (kind == TAG_WATCH && count < max_events) {
        events[count].kind = PC_EVENT_FD;
        events[count].id = id;
        count++;
      }
    }
    for (i = 0; i < n; i++) {
      struct listener *l;
      if ((uint32_t)(evs[i].data.u64 >> 32) != TAG_LISTENER) continue;
      l = find_listener(d, (uint32_t)evs[i].data.u64, NULL);
      if (l == NULL || !l->polled) continue;
      pending_flush(d, l);
      if (l->npending == 0) d->last_accepted += accept_batch(d, l);
      listener_update(d, l);
    }
    if (count > 0) return count;
    if (deadline >= 0 && pc__remaining(deadline) == 0) return 0;
  }
}

/* Upper bounds of the request-duration buckets, microseconds: 1 ms to 10 s (Prometheus'
 * defaults from 5 ms up, two finer ones below for fast endpoints); the last bucket of
 * duration_buckets has none. */
static const uint64_t duration_bounds_us[] = {1000,   2500,   5000,    10000,   25000,   50000,   100000,
                                              250000, 500000, 1000000, 2500000, 5000000, 10000000};
enum { BOUNDS = sizeof(duration_bounds_us) / sizeof(duration_bounds_us[0]) };
PC_STATIC_ASSERT(BOUNDS + 1 == sizeof(((struct pc_score_slot *)0)->duration_buckets) / sizeof(uint64_t),
                 "one bucket per bound, and one over them");

uint64_t pc_score_bucket_bound_us(uint32_t index) {
  if (index < BOUNDS) return duration_bounds_us[index];
  return index == BOUNDS ? UINT64_MAX : 0;
}

void pc_score_record(struct pc_score_slot *slot, uint32_t status, uint64_t duration_us) {
  uint32_t class_index = status >= 100 && status < 600 ? status / 100 - 1 : 5;
  uint32_t bucket = 0;
  while (bucket < BOUNDS && duration_us > duration_bounds_us[bucket]) bucket++;
  atomic_fetch_add_explicit((_Atomic uint64_t *)&slot->status_classes[class_index], 1, memory_order_relaxed);
  atomic_fetch_add_explicit((_Atomic uint64_t *)&slot->duration_buckets[bucket], 1, memory_order_relaxed);
  atomic_fetch_add_explicit((_Atomic uint64_t *)&slot->duration_us, duration_us, memory_order_relaxed);
}

static double now_seconds(void) { return (double)pc__now_ns() / 1e9; }

void pc_score_record_since(struct pc_score_slot *slot, int32_t status, double started_s) {
  double elapsed_s = now_seconds() - started_s;
  uint64_t duration_us = 0;
  /* !(x > 0) also catches NaN; the cap keeps the conversion defined (anything over
   * 10 s is the last bucket). */
  if (elapsed_s > 1e12)
    duration_us = UINT64_C(1000000000000000000);
  else if (elapsed_s > 0)
    duration_us = (uint64_t)(elapsed_s * 1e6);
  pc_score_record(slot, status > 0 ? (uint32_t)status : 0, duration_us);
}

void pc_score_request_started(struct pc_score_slot *slot) {
  atomic_fetch_add_explicit((_Atomic uint32_t *)&slot->inflight, 1, memory_order_relaxed);
}

double pc_score_request_started_at(struct pc_score_slot *slot) {
  pc_score_request_started(slot);
  return now_seconds();
}

void pc_score_request_finished(struct pc_score_slot *slot) {
  atomic_fetch_sub_explicit((_Atomic uint32_t *)&slot->inflight, 1, memory_order_relaxed);
  atomic_fetch_add_explicit((_Atomic uint64_t *)&slot->requests, 1, memory_order_relaxed);
}

void pc_score_request_finished_since(struct pc_score_slot *slot, int32_t status, double started_s) {
  pc_score_request_finished(slot);
  pc_score_record_since(slot, status, started_s);
}
