/* Adaptive spinning: how long a waiter polls before it sleeps in the kernel.
 *
 * Spinning pays only while whoever will release us runs on another CPU. A spin on
 * a thread that has one usable CPU (taskset, cpuset, a one-CPU VM) can never see
 * the hand-off: it only burns the time slice the other side needs (issue 13: a
 * one-CPU ping-pong was 124-137 us with a 50 us spin, 7-12 us without). So:
 *   - one usable CPU (sched_getaffinity, re-read every few hundred waits): no spin;
 *   - otherwise a per-cell budget learnt from recent waits, as glibc's adaptive
 *     mutex (`__spins`) and parking_lot do: a spin that won leaves the budget at
 *     least twice what it took, a spin that lost halves it (down to a floor that
 *     costs ~1 us), and one wait in 16 probes with a larger budget, so a budget
 *     that fell while the peer was descheduled grows back once spinning pays.
 * The kernel's own mutexes also stop spinning when the owner is off-CPU; user space
 * cannot see that cheaply across processes, and the history stands in for it.
 *
 * The table is per process and keyed by the cell's address: a hint only, read and
 * written with relaxed atomics (a lost update costs one mis-sized spin, nothing
 * else).
 */
#include "internal.h"

#include <sched.h>

enum {
  HISTORY_SLOTS = 256,  /* cells hashed into a small table: collisions only blur hints */
  SPIN_FLOOR = 32,      /* ~1 us of PAUSEs: what a lost spin costs at least */
  PROBE_EVERY = 16,
  PROBE_FACTOR = 8,
  CPUS_REFRESH = 256,   /* waits between sched_getaffinity calls */
};

static _Atomic uint32_t history[HISTORY_SLOTS]; /* 0: never seen; else budget + 1 */
static _Thread_local int usable_cpus;
static _Thread_local uint32_t waits_seen;

static int cpus_now(void) {
  if (usable_cpus == 0 || waits_seen % CPUS_REFRESH == 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    usable_cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 2;
    if (usable_cpus < 1) usable_cpus = 1;
  }
  return usable_cpus;
}

static _Atomic uint32_t *slot_of(const void *cell) {
  uintptr_t a = (uintptr_t)cell >> 2;
  return &history[(uint32_t)(a * 0x9E3779B1u) >> 24]; /* Fibonacci hash to 8 bits */
}

uint32_t pc__spin_budget(const void *cell, uint32_t max_spin) {
  uint32_t seen, budget;
  waits_seen++;
  if (max_spin == 0 || cpus_now() < 2) return 0;
  seen = atomic_load_explicit(slot_of(cell), memory_order_relaxed);
  budget = seen == 0 ? max_spin : seen - 1;
  if (waits_seen % PROBE_EVERY == 0) budget *= PROBE_FACTOR;
  if (budget < SPIN_FLOOR) budget = SPIN_FLOOR;
  return budget < max_spin ? budget : max_spin;
}

void pc__spin_done(const void *cell, uint32_t max_spin, uint32_t budget, uint32_t spun, int won) {
  _Atomic uint32_t *slot = slot_of(cell);
  uint32_t seen, old, next;
  if (budget == 0) return; /* did not spin: nothing learnt */
  seen = atomic_load_explicit(slot, memory_order_relaxed);
  old = seen == 0 ? max_spin : seen - 1;
  if (won) {
    next = 2 * spun + SPIN_FLOOR;
    if (next < old) next = old;
  } else {
    next = old / 2;
  }
  if (next < SPIN_FLOOR) next = SPIN_FLOOR;
  if (next > max_spin) next = max_spin;
  atomic_store_explicit(slot, next + 1, memory_order_relaxed);
}
