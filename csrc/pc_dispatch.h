/* The primary's dispatch loop: accept on the listening sockets, choose a worker by
 * policy, pass the connection over the worker's channel (a PC_MSG_CONN message,
 * see pc_channel.h); report everything else to Python.
 *
 * Plain declarations only (this header is also cffi's cdef, see pc_channel.h).
 * Every function returns >= 0 or -errno unless it says otherwise; ids that are not
 * known give -ENOENT, ids added twice -EEXIST.
 */
#ifndef PC_DISPATCH_H
#define PC_DISPATCH_H
#include <stdint.h>

enum { PC_SCHED_RR = 0, PC_SCHED_LEAST = 1, PC_SCHED_STICKY = 2 };

/* One per worker in the scoreboard (a shared region): written by the worker with
 * atomics, read by the primary. 256 bytes, pinned with static asserts in
 * dispatch.c, which reads the fields as _Atomic.
 * handed: connections the worker has taken off its channel (it adds 1 per
 * PC_MSG_CONN received). `least` counts the primary's own handed count minus this
 * as connections still queued to the worker, so that a burst is spread before the
 * worker's inflight/connections counters catch up.
 * duration_us, status_classes, duration_buckets: what pc_score_record adds per
 * response (the Prometheus histogram and status classes, with no per-request IPC). */
struct pc_score_slot {
  uint32_t pid;
  uint32_t state;
  uint64_t heartbeat_ns;
  uint64_t requests;
  uint32_t inflight;
  uint32_t connections;
  uint64_t handed;
  uint64_t duration_us;          /* sum of the recorded durations */
  uint64_t status_classes[6];    /* 1xx, 2xx, 3xx, 4xx, 5xx, other */
  uint64_t duration_buckets[14]; /* per bucket, not cumulative; the last: over every bound */
  uint8_t reserved[48];
};

/* One response: its status class and duration, added with relaxed atomic adds
 * (never blocks). Bucket i counts durations <= pc_score_bucket_bound_us(i) that are
 * above the bound before; the bound of the last bucket is UINT64_MAX. */
void pc_score_record(struct pc_score_slot *slot, uint32_t status, uint64_t duration_us);
/* The same, for a response whose request began at started_s: CLOCK_MONOTONIC in
 * seconds, as Python's time.monotonic(). The clock is read here, not in the caller.
 * A double and an int32: cffi converts a float or a small int with one call, where a
 * 64-bit int (time.monotonic_ns()) takes CPython's byte-array path (these run once
 * per request). A start in the future counts as 0 µs. */
void pc_score_record_since(struct pc_score_slot *slot, int32_t status, double started_s);
/* A request begins (inflight + 1) or ends (inflight - 1, requests + 1). */
void pc_score_request_started(struct pc_score_slot *slot);
void pc_score_request_finished(struct pc_score_slot *slot);
/* With metrics on, one call at each end of a request: request_started that also
 * returns CLOCK_MONOTONIC now in seconds (the start), and request_finished with
 * record_since. */
double pc_score_request_started_at(struct pc_score_slot *slot);
void pc_score_request_finished_since(struct pc_score_slot *slot, int32_t status, double started_s);
uint64_t pc_score_bucket_bound_us(uint32_t index);

/* What pc_dispatch_run reports. id = the token (PC_EVENT_FD) or the worker_id.
 * PC_EVENT_WORKER_HUP is reported once: the loop then stops watching that channel
 * and sends it no more connections (call pc_dispatch_remove_worker next).
 * PC_EVENT_WORKER_WRITABLE answers pc_dispatch_notify_writable, once. */
enum { PC_EVENT_FD = 1, PC_EVENT_WORKER_READABLE = 2, PC_EVENT_WORKER_HUP = 3, PC_EVENT_WORKER_WRITABLE = 4 };
struct pc_event {
  uint32_t kind;
  uint32_t id;
};

struct pc_dispatch;
/* NULL and *err = -errno on failure; -EINVAL for an unknown policy. */
struct pc_dispatch *pc_dispatch_new(int sched, int *err);
/* Closes only the loop's own epoll fd and the connections still pending in it;
 * listener and channel fds belong to Python. */
void pc_dispatch_free(struct pc_dispatch *d);
int pc_dispatch_set_sched(struct pc_dispatch *d, int sched);
/* fd: a non-blocking listening socket. It is polled once a worker listens on it.
 * remove_listener closes the connections still pending for it (their clients see
 * a reset); call it before closing fd. */
int pc_dispatch_add_listener(struct pc_dispatch *d, uint32_t listener_id, int fd);
int pc_dispatch_remove_listener(struct pc_dispatch *d, uint32_t listener_id);
/* channel_fd: the primary's end of the worker's channel. slot may be NULL (least
 * then counts only what is queued to the worker). */
int pc_dispatch_add_worker(struct pc_dispatch *d, uint32_t worker_id, int channel_fd,
                           struct pc_score_slot *slot);
/* The worker gets that listener's connections (idempotent). */
int pc_dispatch_worker_listen(struct pc_dispatch *d, uint32_t worker_id, uint32_t listener_id);
/* The worker gets no more of that listener's connections (idempotent); it keeps
 * its other listeners. */
int pc_dispatch_worker_unlisten(struct pc_dispatch *d, uint32_t worker_id, uint32_t listener_id);
/* No more connections to it; stops watching its channel. Call it before closing the
 * channel fd, and before reading a dead worker's queued connections back (so that
 * pc_dispatch_hand_off cannot choose it again). */
int pc_dispatch_remove_worker(struct pc_dispatch *d, uint32_t worker_id);
/* Report one PC_EVENT_WORKER_WRITABLE when the worker's channel can take a message
 * again (after Python's own pc_channel_send got -EAGAIN). */
int pc_dispatch_notify_writable(struct pc_dispatch *d, uint32_t worker_id);
/* Extra fds (signalfd, pidfds, control socket, timerfd), level-triggered: one is
 * reported on every run until Python reads it. */
int pc_dispatch_watch(struct pc_dispatch *d, int fd, uint32_t token);
int pc_dispatch_unwatch(struct pc_dispatch *d, int fd);

/* The loop. epoll_wait; listener readable -> accept4 (SOCK_NONBLOCK|SOCK_CLOEXEC)
 * up to 64 per wake -> choose a worker listening on it by policy (rr and sticky
 * skip a worker whose channel is full, least picks the fewest inflight +
 * connections + queued, ties in rr order) -> one PC_MSG_CONN per connection,
 * those for the same worker in one sendmmsg -> close the loop's copies (one
 * close_range per run of consecutive fds). Coalescing: after a wake that found
 * two or more connections waiting, the next call first naps up to 1 ms (never
 * past timeout_ns) off the epoll wait queue, so that a burst costs one wake per
 * batch rather than per 2-3 connections; a lone connection is never delayed.
 * Everything else (a watched fd ready, a worker channel readable or hung up) is
 * written to events[] and the call returns the count (> 0). Returns 0 on timeout
 * (timeout_ns < 0: none), -EINTR on a signal (not retried), -EINVAL for
 * max_events < 1, other -errno from epoll_wait.
 * Backpressure: when no worker listening on a listener can take a connection, the
 * listener is not polled (connections wait in the kernel backlog; one already
 * accepted waits in the listener's pending queue, never dropped) until a channel
 * becomes writable (EPOLLOUT) or a worker starts listening. Out of fds (EMFILE)
 * pauses accepting for 100 ms instead of spinning. */
int pc_dispatch_run(struct pc_dispatch *d, int64_t timeout_ns, struct pc_event *events, int max_events);

/* Hand one connection to a worker of listener_id chosen by the policy (to
 * redistribute connections read back from a dead worker's channel). addr_len <=
 * 128. Returns the worker_id (sent; the loop closed conn_fd), or -EAGAIN (no worker
 * can take it now: kept in the pending queue and sent later; the loop owns
 * conn_fd). On -ENOENT (unknown listener) or -EINVAL the caller still owns conn_fd. */
int pc_dispatch_hand_off(struct pc_dispatch *d, uint32_t listener_id, int conn_fd, const void *addr,
                         uint32_t addr_len);

/* Connections handed to a worker so far (for tests, metrics and the status table). */
int64_t pc_dispatch_handed(struct pc_dispatch *d, uint32_t worker_id);
/* Connections accepted (or handed off) for a listener and not yet sent to a worker. */
int64_t pc_dispatch_pending(struct pc_dispatch *d, uint32_t listener_id);

#endif
