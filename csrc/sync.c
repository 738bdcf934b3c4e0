/* The core's futex lock, and the Mutex, condition variable, semaphore and barrier
 * built in shared memory on futexes (non-private: they work across processes).
 * Each waits in three steps: try in user space, spin while spinning pays (spin.c),
 * then sleep in the kernel. Blocking calls return -EINTR so Python's signal
 * handlers run; Python calls again with the time left. */
#include "internal.h"
#include "pc_shared.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Python sizes and reads the primitives through these structs (pc_shared.h); the
 * code below indexes the same 32-bit words. */
PC_STATIC_ASSERT(sizeof(struct pc_mutex) == 4, "a mutex is one word");
PC_STATIC_ASSERT(sizeof(struct pc_cond) == 8 && offsetof(struct pc_cond, waiters) == 4, "cond words");
PC_STATIC_ASSERT(sizeof(struct pc_sem) == 8 && offsetof(struct pc_sem, sleepers) == 4, "sem words");
PC_STATIC_ASSERT(sizeof(struct pc_barrier) == 12 && offsetof(struct pc_barrier, state) == 4 &&
                     offsetof(struct pc_barrier, broken) == 8,
                 "barrier words");

/* ---- thread ids ------------------------------------------------------------- */

static _Thread_local uint32_t cached_tid;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* After fork the child's only thread has a new id: forget the parent's. */
static void forget_tid(void) { cached_tid = 0; }
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_tid); }

uint32_t pc__tid(void) {
  if (cached_tid == 0) {
    pthread_once(&atfork_once, register_atfork);
    cached_tid = (uint32_t)syscall(SYS_gettid) & PC__LOCK_TID_MASK;
  }
  return cached_tid;
}

/* Is the thread gone? kill(tid, 0) finds any live thread by its id (ESRCH once it
 * is gone; EPERM means it exists under another user). A dead process's main thread
 * stays findable as a zombie until its parent reaps it, so the thorough check also
 * reads its state from /proc. Thread ids mean something within one pid namespace,
 * where the processes of one cluster live; an id reused by a new thread in the
 * moment between a death and this check reads as alive (the waiter keeps waiting,
 * as it would without robustness). */
static int thread_gone(uint32_t tid, int thorough) {
  char path[48], buf[512], *p;
  ssize_t n;
  int fd;
  if (kill((pid_t)tid, 0) < 0) return errno == ESRCH;
  if (!thorough) return 0;
  snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)tid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return errno == ENOENT;
  do n = read(fd, buf, sizeof buf - 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  return p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

/* ---- the lock: 0 free, else owner tid | PC__LOCK_WAITERS --------------------- */

/* A sleeper re-checks its owner's life this often (doubling from the first): a
 * dead owner never wakes anyone, and no kernel robust list knows our locks. */
#define OWNER_CHECK_FIRST_NS 2000000LL  /* 2 ms */
#define OWNER_CHECK_MAX_NS 500000000LL  /* 0.5 s */

int pc__trylock(_Atomic uint32_t *word) {
  uint32_t c = 0;
  return atomic_compare_exchange_strong(word, &c, pc__tid()) ? 0 : -EBUSY;
}

/* Take a lock whose owner (in v) is gone; keeps the waiters bit so that the
 * others are woken by our unlock. 1 when taken, 0 when the word moved on. */
static int take_over(_Atomic uint32_t *word, uint32_t v) {
  return atomic_compare_exchange_strong(word, &v, pc__tid() | (v & PC__LOCK_WAITERS));
}

int pc__lock(_Atomic uint32_t *word, int64_t timeout_ns, uint32_t max_spin) {
  uint32_t me = pc__tid(), v = 0, budget, i, checked = 0;
  int64_t deadline, slice = OWNER_CHECK_FIRST_NS;
  if (atomic_compare_exchange_strong(word, &v, me)) return 0;
  if (timeout_ns == 0) max_spin = 0;
  budget = pc__spin_budget(word, max_spin);
  for (i = 0; i < budget; i++) {
    pc__cpu_relax();
    v = 0;
    if (atomic_load_explicit(word, memory_order_relaxed) == 0 &&
        atomic_compare_exchange_strong(word, &v, me)) {
      pc__spin_done(word, max_spin, budget, i, 1);
      return 0;
    }
  }
  pc__spin_done(word, max_spin, budget, budget, 0);
  deadline = pc__deadline(timeout_ns);
  for (;;) {
    int64_t left, nap;
    int rc;
    v = atomic_load(word);
    if (v == 0) {
      /* We may have slept: others may sleep too, so take it marked contended
       * (Drepper, "Futexes are tricky", mutex #3). */
      if (atomic_compare_exchange_strong(word, &v, me | PC__LOCK_WAITERS)) return 0;
      continue;
    }
    /* Once, before the first sleep: is the owner gone? The cheap look (kill); a
     * zombie owner is found by the thorough look after the first nap. */
    if (!checked++ && thread_gone(v & PC__LOCK_TID_MASK, 0)) {
      if (take_over(word, v)) return -EOWNERDEAD;
      continue;
    }
    left = pc__remaining(deadline);
    if (left == 0) return -ETIMEDOUT; /* before marking waiters: we will not sleep */
    if (!(v & PC__LOCK_WAITERS)) {
      if (!atomic_compare_exchange_strong(word, &v, v | PC__LOCK_WAITERS)) continue;
      v |= PC__LOCK_WAITERS;
    }
    nap = left < 0 || left > slice ? slice : left;
    rc = pc__futex_wait(word, v, nap);
    if (rc == -EINTR) return -EINTR;
    if (rc == -ETIMEDOUT && nap == slice) {
      if (thread_gone(v & PC__LOCK_TID_MASK, 1)) {
        if (take_over(word, v)) return -EOWNERDEAD;
        continue;
      }
      if (slice < OWNER_CHECK_MAX_NS) slice *= 2;
    }
  }
}

int pc__unlock(_Atomic uint32_t *word) {
  uint32_t c = atomic_exchange(word, 0);
  if (c == 0) return -EPERM;
  if (c & PC__LOCK_WAITERS) pc__futex_wake(word, 1);
  return 0;
}

/* ---- mutex: one lock word ---------------------------------------------------- */

int pc_mutex_trylock(void *mutex) { return pc__trylock(mutex); }

int pc_mutex_lock(void *mutex, int64_t timeout_ns, uint32_t spin) {
  return pc__lock(mutex, timeout_ns, spin);
}

int pc_mutex_unlock(void *mutex) { return pc__unlock(mutex); }

int pc_mutex_owner(void *mutex) {
  return (int)(atomic_load((_Atomic uint32_t *)mutex) & PC__LOCK_TID_MASK);
}

/* ---- condition: words (sequence, waiters) ---------------------------------- */

static int mutex_relock(void *mutex) {
  int rc;
  while ((rc = pc__lock(mutex, -1, 0)) == -EINTR)
    ; /* the caller's handlers run after it returns holding the lock */
  return rc;
}

int pc_cond_wait(void *cond, void *mutex, int64_t timeout_ns) {
  _Atomic uint32_t *seq = cond, *waiters = seq + 1;
  uint32_t seen = atomic_load(seq);
  int rc, relock;
  atomic_fetch_add(waiters, 1);
  rc = pc__unlock(mutex);
  if (rc < 0) {
    atomic_fetch_sub(waiters, 1);
    return rc;
  }
  rc = pc__futex_wait(seq, seen, timeout_ns);
  atomic_fetch_sub(waiters, 1);
  relock = mutex_relock(mutex);
  return relock == -EOWNERDEAD ? relock : rc;
}

int pc_cond_notify(void *cond, int64_t count) {
  _Atomic uint32_t *seq = cond, *waiters = seq + 1;
  atomic_fetch_add(seq, 1);
  if (atomic_load(waiters) == 0 || count == 0) return 0;
  return pc__futex_wake(seq, count < 0 || count > INT_MAX ? INT_MAX : (int)count);
}

/* ---- semaphore: words (value, sleepers) ------------------------------------ */

void pc_sem_init(void *sem, uint32_t value) {
  _Atomic uint32_t *words = sem;
  atomic_store(&words[0], value);
  atomic_store(&words[1], 0);
}

static int sem_try(_Atomic uint32_t *value) {
  uint32_t v = atomic_load_explicit(value, memory_order_relaxed);
  while (v > 0)
    if (atomic_compare_exchange_weak(value, &v, v - 1)) return 1;
  return 0;
}

int pc_sem_acquire(void *sem, int64_t timeout_ns, uint32_t spin) {
  _Atomic uint32_t *value = sem, *sleepers = value + 1;
  int64_t deadline;
  uint32_t i, budget;
  int rc = 0;
  if (sem_try(value)) return 0;
  if (timeout_ns == 0) spin = 0;
  budget = pc__spin_budget(value, spin);
  for (i = 0; i < budget; i++) {
    pc__cpu_relax();
    if (atomic_load_explicit(value, memory_order_relaxed) > 0 && sem_try(value)) {
      pc__spin_done(value, spin, budget, i, 1);
      return 0;
    }
  }
  pc__spin_done(value, spin, budget, budget, 0);
  deadline = pc__deadline(timeout_ns);
  atomic_fetch_add(sleepers, 1);
  for (;;) {
    int64_t left;
    if (sem_try(value)) break;
    left = pc__remaining(deadline);
    if (left == 0) {
      rc = -ETIMEDOUT;
      break;
    }
    rc = pc__futex_wait(value, 0, left);
    if (rc == -EINTR) break;
    rc = 0;
  }
  atomic_fetch_sub(sleepers, 1);
  return rc;
}

int pc_sem_release(void *sem, uint32_t n) {
  _Atomic uint32_t *value = sem, *sleepers = value + 1;
  uint32_t old = atomic_load(value);
  do {
    if (old > UINT32_MAX - n) return -EOVERFLOW;
  } while (!atomic_compare_exchange_weak(value, &old, old + n));
  /* seq_cst on both sides: a sleeper counted itself before re-checking value. */
  if (atomic_load(sleepers) > 0) pc__futex_wake(value, n > INT_MAX ? INT_MAX : (int)n);
  return 0;
}

int pc_sem_value(void *sem) {
  uint32_t v = atomic_load((_Atomic uint32_t *)sem);
  return v > INT_MAX ? INT_MAX : (int)v;
}

/* ---- barrier: words (parties, generation << 16 | arrived, broken) -----------
 * Generation and count share one word so that an arrival can never be counted in
 * a round that has already been released. */

#define BARRIER_ARRIVED(state) ((state) & 0xffffu)
#define BARRIER_GENERATION(state) ((state) >> 16)

int pc_barrier_init(void *barrier, uint32_t parties) {
  _Atomic uint32_t *words = barrier;
  uint32_t seen = 0;
  if (parties == 0 || parties > 0xffff) return -EINVAL;
  /* Attach when another process set it up with the same count. */
  if (!atomic_compare_exchange_strong(&words[0], &seen, parties))
    return seen == parties ? 0 : -EEXIST;
  return 0;
}

int pc_barrier_arrive(void *barrier, uint32_t *generation) {
  _Atomic uint32_t *words = barrier, *state = words + 1;
  uint32_t parties = atomic_load(&words[0]), old = atomic_load(state), next;
  if (atomic_load(&words[2])) return -EPIPE;
  for (;;) {
    uint32_t arrived = BARRIER_ARRIVED(old) + 1;
    next = arrived == parties ? (BARRIER_GENERATION(old) + 1) << 16 : old + 1;
    if (atomic_compare_exchange_weak(state, &old, next)) break;
  }
  *generation = BARRIER_GENERATION(old);
  if (BARRIER_ARRIVED(old) + 1 == parties) {
    pc__futex_wake(state, INT_MAX);
    return (int)parties - 1;
  }
  return (int)BARRIER_ARRIVED(old);
}

int pc_barrier_await(void *barrier, uint32_t generation, int64_t timeout_ns, uint32_t spin) {
  _Atomic uint32_t *words = barrier, *state = words + 1;
  int64_t deadline;
  uint32_t i, seen, budget;
  if (timeout_ns == 0) spin = 0;
  budget = pc__spin_budget(state, spin);
  for (i = 0; i < budget; i++) {
    /* acquire: what the other parties wrote before arriving is visible on return */
    if (BARRIER_GENERATION(atomic_load_explicit(state, memory_order_acquire)) != generation) {
      pc__spin_done(state, spin, budget, i, 1);
      return 0;
    }
    pc__cpu_relax();
  }
  pc__spin_done(state, spin, budget, budget, 0);
  deadline = pc__deadline(timeout_ns);
  while (BARRIER_GENERATION(seen = atomic_load(state)) == generation) {
    int64_t left = pc__remaining(deadline);
    int rc;
    if (atomic_load(&words[2])) return -EPIPE;
    if (left == 0) {
      pc_barrier_abort(barrier);
      return -ETIMEDOUT;
    }
    rc = pc__futex_wait(state, seen, left);
    if (rc == -EINTR) return -EINTR;
  }
  return 0;
}

void pc_barrier_abort(void *barrier) {
  _Atomic uint32_t *words = barrier;
  atomic_store(&words[2], 1);
  pc__futex_wake(&words[1], INT_MAX);
}
