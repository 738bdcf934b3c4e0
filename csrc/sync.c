/* Mutex, condition variable, semaphore and barrier in shared memory, on futexes
 * (non-private: they work across processes). Each waits in three steps: try in
 * user space, spin a little (the holder is often running on the other core), then
 * sleep in the kernel. Blocking calls return -EINTR so Python's signal handlers run;
 * Python calls again with the time left. */
#include "internal.h"
#include "pc_shared.h"

#include <errno.h>
#include <limits.h>

/* ---- mutex: one word. 0 unlocked, 1 locked, 2 locked and maybe waiters ------ */

int pc_mutex_trylock(void *mutex) {
  uint32_t c = 0;
  return atomic_compare_exchange_strong((_Atomic uint32_t *)mutex, &c, 1) ? 0 : -EBUSY;
}

int pc_mutex_lock(void *mutex, int64_t timeout_ns, uint32_t spin) {
  _Atomic uint32_t *word = mutex;
  int64_t deadline;
  uint32_t c, i;
  if (pc_mutex_trylock(mutex) == 0) return 0;
  for (i = 0; i < spin; i++) {
    pc__cpu_relax();
    if (atomic_load_explicit(word, memory_order_relaxed) == 0 && pc_mutex_trylock(mutex) == 0)
      return 0;
  }
  deadline = pc__deadline(timeout_ns);
  /* Drepper's mutex #3: whoever takes the lock from here marks it contended. */
  while ((c = atomic_exchange(word, 2)) != 0) {
    int64_t left = pc__remaining(deadline);
    int rc;
    if (left == 0) return -ETIMEDOUT;
    rc = pc__futex_wait(word, 2, left);
    if (rc == -EINTR) return -EINTR;
  }
  return 0;
}

int pc_mutex_unlock(void *mutex) {
  _Atomic uint32_t *word = mutex;
  uint32_t c = atomic_exchange(word, 0);
  if (c == 0) return -EPERM;
  if (c == 2) pc__futex_wake(word, 1);
  return 0;
}

/* ---- condition: words (sequence, waiters) ---------------------------------- */

static void mutex_relock(void *mutex) {
  while (pc_mutex_lock(mutex, -1, 0) == -EINTR)
    ; /* the caller's handlers run after it returns holding the lock */
}

int pc_cond_wait(void *cond, void *mutex, int64_t timeout_ns) {
  _Atomic uint32_t *seq = cond, *waiters = seq + 1;
  uint32_t seen = atomic_load(seq);
  int rc;
  atomic_fetch_add(waiters, 1);
  rc = pc_mutex_unlock(mutex);
  if (rc < 0) {
    atomic_fetch_sub(waiters, 1);
    return rc;
  }
  rc = pc__futex_wait(seq, seen, timeout_ns);
  atomic_fetch_sub(waiters, 1);
  mutex_relock(mutex);
  return rc;
}

int pc_cond_notify(void *cond, int64_t count) {
  _Atomic uint32_t *seq = cond, *waiters = seq + 1;
  atomic_fetch_add(seq, 1);
  if (atomic_load(waiters) == 0 || count == 0) return 0;
  return pc__futex_wake(seq, count < 0 || count > INT_MAX ? INT_MAX : (int)count);
}

/* ---- semaphore: words (value, sleepers) ------------------------------------ */

int pc_sem_init(void *sem, uint32_t value) {
  _Atomic uint32_t *words = sem;
  atomic_store(&words[0], value);
  atomic_store(&words[1], 0);
  return 0;
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
  uint32_t i;
  int rc = 0;
  if (sem_try(value)) return 0;
  for (i = 0; i < spin; i++) {
    pc__cpu_relax();
    if (atomic_load_explicit(value, memory_order_relaxed) > 0 && sem_try(value)) return 0;
  }
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
  uint32_t i, seen;
  for (i = 0; i < spin; i++) {
    if (BARRIER_GENERATION(atomic_load_explicit(state, memory_order_relaxed)) != generation)
      return 0;
    pc__cpu_relax();
  }
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

int pc_barrier_abort(void *barrier) {
  _Atomic uint32_t *words = barrier;
  atomic_store(&words[2], 1);
  pc__futex_wake(&words[1], INT_MAX);
  return 0;
}
