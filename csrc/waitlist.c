/* Atomics.wait / Atomics.notify over the region header's waiter table.
 *
 * Why a table and not a futex on the cell itself: JS needs notify(count) to return
 * exactly how many waiters it woke and a 64-bit cell has no futex of its own (a
 * futex on its low half misses changes to the high half). Each waiter owns a slot
 * whose `state` word is its private futex; the cell comparison and every
 * state change that decides the result happen under the table lock, so:
 *   - a store + notify can never fall between a waiter's check and its sleep
 *     (the waiter compared under the lock, the notifier scans under the lock);
 *   - "ok" means a notify counted this waiter, never a spurious wake-up.
 * Waiters spin on their slot before sleeping while spinning pays (spin.c: not
 * with one usable CPU, and per cell as recent waits say): on two free CPUs the
 * notifier usually arrives within microseconds, and a futex round trip costs
 * tens. A notifier only makes the wake syscall for a waiter that went to sleep.
 */
#include "region.h"
#include "pc_shared.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#define LOCK_SPIN 200

/* The table lock is the core's one futex lock (sync.c): robust, so a process
 * killed while holding it (a SIGKILL in the few instructions it is held) does not
 * wedge every later wait and notify on the region. */
static void table_lock(struct pc_region_header *h) {
  while (pc__lock(&h->lock, -1, LOCK_SPIN) == -EINTR)
    ; /* the hold is short: look again, the caller's handlers run after */
}

static void table_unlock(struct pc_region_header *h) { pc__unlock(&h->lock); }

static int cell_equals(void *cell, int width, int64_t expected) {
  if (width == 8) return atomic_load((_Atomic int64_t *)cell) == expected;
  return atomic_load((_Atomic int32_t *)cell) == (int32_t)expected;
}

static int is_waiting(uint32_t state) {
  return state == PC_WAITER_WAITING || state == PC_WAITER_SLEEPING;
}

static void free_slot(struct pc_region_header *h, int slot) {
  atomic_store(&h->waiters[slot].state, PC_WAITER_FREE);
  while (h->slot_limit > 0 &&
         atomic_load(&h->waiters[h->slot_limit - 1].state) == PC_WAITER_FREE)
    h->slot_limit--;
}

/* A waiter whose process was killed while waiting must neither keep its slot nor
 * be counted by notify. kill(pid, 0) tells; pids mean something only within one
 * pid namespace, which is where the processes of one cluster live. */
static int owner_gone(const struct pc_waiter *w) {
  return kill(w->pid, 0) < 0 && errno == ESRCH;
}

/* Frees the slot of a dead owner; 1 when it did. Called with the lock held. */
static int reclaim_if_dead(struct pc_region_header *h, int slot) {
  if (!owner_gone(&h->waiters[slot])) return 0;
  free_slot(h, slot);
  return 1;
}

/* Reclaims every slot whose owner process is gone. Called with the lock held,
 * only when the table is full. */
static int reclaim_dead(struct pc_region_header *h) {
  uint32_t i;
  int freed = 0;
  for (i = h->slot_limit; i-- > 0;)
    if (atomic_load(&h->waiters[i].state) != PC_WAITER_FREE) freed += reclaim_if_dead(h, (int)i);
  return freed;
}

int pc_wait_register(void *header, void *cell, uint64_t byte_offset, int width,
                     int64_t expected, int *slot) {
  struct pc_region_header *h = header;
  int i, retried = 0;
  if (width != 4 && width != 8) return -EINVAL;
  table_lock(h);
  if (!cell_equals(cell, width, expected)) {
    table_unlock(h);
    return PC_WAIT_NOT_EQUAL;
  }
again:
  for (i = 0; i < PC_WAITER_SLOTS; i++)
    if (atomic_load(&h->waiters[i].state) == PC_WAITER_FREE) break;
  if (i == PC_WAITER_SLOTS) {
    if (!retried++ && reclaim_dead(h) > 0) goto again;
    table_unlock(h);
    return -EAGAIN;
  }
  h->waiters[i].pid = (int32_t)getpid();
  h->waiters[i].byte_offset = byte_offset;
  h->waiters[i].ticket = h->next_ticket++;
  atomic_store(&h->waiters[i].state, PC_WAITER_WAITING);
  if ((uint32_t)i >= h->slot_limit) h->slot_limit = (uint32_t)i + 1;
  table_unlock(h);
  *slot = i;
  return PC_WAIT_OK;
}

int pc_wait_release(void *header, int slot) {
  struct pc_region_header *h = header;
  uint32_t state;
  if (slot < 0 || slot >= PC_WAITER_SLOTS) return -EINVAL;
  table_lock(h);
  state = atomic_load(&h->waiters[slot].state);
  free_slot(h, slot);
  table_unlock(h);
  return state == PC_WAITER_NOTIFIED ? PC_WAIT_OK : PC_WAIT_TIMED_OUT;
}

int pc_wait_block(void *header, int slot, int64_t timeout_ns, uint32_t spin) {
  struct pc_region_header *h = header;
  struct pc_waiter *w;
  int64_t deadline = pc__deadline(timeout_ns);
  uint32_t expected = PC_WAITER_WAITING, i, budget;
  const void *cell;
  if (slot < 0 || slot >= PC_WAITER_SLOTS) return -EINVAL;
  w = &h->waiters[slot];
  /* the spin history's key: this mapping's address of the cell (never dereferenced) */
  cell = (const void *)((uintptr_t)h + PC_REGION_HEADER_SIZE + (uintptr_t)w->byte_offset);
  if (timeout_ns == 0) spin = 0;
  budget = pc__spin_budget(cell, spin);
  for (i = 0; i < budget && atomic_load_explicit(&w->state, memory_order_relaxed) ==
                                PC_WAITER_WAITING; i++)
    pc__cpu_relax();
  if (budget > 0) pc__spin_done(cell, spin, budget, i, i < budget);
  /* Announce the sleep; a notifier that already marked us leaves the CAS failing. */
  atomic_compare_exchange_strong(&w->state, &expected, PC_WAITER_SLEEPING);
  for (;;) {
    int64_t left;
    int rc;
    if (!is_waiting(atomic_load(&w->state))) break;
    left = pc__remaining(deadline);
    if (left == 0) break;
    rc = pc__futex_wait(&w->state, PC_WAITER_SLEEPING, left);
    if (rc == -EINTR) return -EINTR;
  }
  return atomic_load(&w->state) == PC_WAITER_NOTIFIED ? PC_WAIT_OK : PC_WAIT_TIMED_OUT;
}

int pc_wait(void *header, void *base, uint64_t base_offset, uint64_t index, int width,
            int64_t expected, int64_t timeout_ns, uint32_t spin, int *slot) {
  int taken, rc;
  *slot = -1;
  if (width != 4 && width != 8) return -EINVAL;
  rc = pc_wait_register(header, (char *)base + index * (uint64_t)width,
                        base_offset + index * (uint64_t)width, width, expected, &taken);
  if (rc != PC_WAIT_OK) return rc; /* not-equal, -EAGAIN: no slot taken */
  rc = pc_wait_block(header, taken, timeout_ns, spin);
  if (rc == -EINTR) {
    *slot = taken; /* the caller resumes with pc_wait_block, then releases */
    return rc;
  }
  return pc_wait_release(header, taken);
}

int pc_wait_abort(void *header, int slot) {
  struct pc_region_header *h = header;
  struct pc_waiter *w;
  if (slot < 0 || slot >= PC_WAITER_SLOTS) return -EINVAL;
  w = &h->waiters[slot];
  table_lock(h);
  if (is_waiting(atomic_load(&w->state)) &&
      atomic_exchange(&w->state, PC_WAITER_ABORTED) == PC_WAITER_SLEEPING)
    pc__futex_wake(&w->state, 1);
  table_unlock(h);
  return 0;
}

/* Marks the waiter in a slot notified and returns 1 (adding the slot to wake[] when
 * it sleeps in the kernel), or frees the slot and returns 0 when its process is
 * gone. Called with the lock held. */
static int notify_slot(struct pc_region_header *h, int slot, int *wake, int *nwake) {
  struct pc_waiter *w = &h->waiters[slot];
  if (reclaim_if_dead(h, slot)) return 0;
  if (atomic_exchange(&w->state, PC_WAITER_NOTIFIED) == PC_WAITER_SLEEPING) wake[(*nwake)++] = slot;
  return 1;
}

static int waits_on(const struct pc_waiter *w, uint64_t byte_offset) {
  return is_waiting(atomic_load(&w->state)) && w->byte_offset == byte_offset;
}

/* The wake-ups are made after the table lock is released: a woken waiter goes
 * straight for the lock (pc_wait_release), and on one CPU it often runs before
 * the notifier, which would otherwise still hold it (a sleep and a wake more per
 * round trip). A slot freed and reused in between gets a spurious wake-up, which
 * its pc_wait_block ignores (it re-checks its state). */
int pc_notify(void *header, uint64_t byte_offset, int64_t count) {
  struct pc_region_header *h = header;
  int wake[PC_WAITER_SLOTS]; /* 8 KiB of stack: at most one entry per slot */
  uint32_t i;
  int woken = 0, nwake = 0, k;
  table_lock(h);
  if (count < 0) { /* all of them: one pass, order does not matter */
    for (i = 0; i < h->slot_limit; i++)
      if (waits_on(&h->waiters[i], byte_offset)) woken += notify_slot(h, (int)i, wake, &nwake);
  }
  while (count >= 0 && woken < count) { /* oldest first */
    int oldest = -1;
    for (i = 0; i < h->slot_limit; i++)
      if (waits_on(&h->waiters[i], byte_offset) &&
          (oldest < 0 || h->waiters[i].ticket < h->waiters[oldest].ticket))
        oldest = (int)i;
    if (oldest < 0) break;
    woken += notify_slot(h, oldest, wake, &nwake);
  }
  table_unlock(h);
  for (k = 0; k < nwake; k++) pc__futex_wake(&h->waiters[wake[k]].state, 1);
  return woken;
}

int pc_waiters(void *header, uint64_t byte_offset) {
  struct pc_region_header *h = header;
  uint32_t i;
  int n = 0;
  table_lock(h);
  for (i = 0; i < h->slot_limit; i++) n += waits_on(&h->waiters[i], byte_offset);
  table_unlock(h);
  return n;
}
