/* pc__ functions shared between the core's files (libuv's naming tiers: pc_ is
 * what the cffi module calls, pc__ is internal, static is file-local). */
#ifndef PC_INTERNAL_H
#define PC_INTERNAL_H
#include "config.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* futex_linux.c. Shared (non-private) futexes: they must work across processes.
 * pc__futex_wait returns 0 when woken (or the word changed), -ETIMEDOUT, -EINTR. */
int pc__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns);
int pc__futex_wake(_Atomic uint32_t *word, int count);
/* Absolute CLOCK_MONOTONIC deadline in ns for a relative timeout (< 0: none). */
int64_t pc__deadline(int64_t timeout_ns);
/* CLOCK_MONOTONIC now, ns (the clock of Python's time.monotonic_ns()). */
int64_t pc__now_ns(void);
/* Time left until a deadline from pc__deadline: < 0 forever, 0 expired. */
int64_t pc__remaining(int64_t deadline_ns);
/* spin.c. How many polls a waiter on `cell` may spend before it sleeps (at most
 * max_spin; 0 on a thread with one usable CPU), and what came of them: spun polls,
 * won = the hand-off came while spinning. */
uint32_t pc__spin_budget(const void *cell, uint32_t max_spin);
void pc__spin_done(const void *cell, uint32_t max_spin, uint32_t budget, uint32_t spun, int won);

/* sync.c. The one futex lock of the core (Mutex, the region's waiter table): a
 * word that is 0 when free, else the owner's thread id | PC__LOCK_WAITERS (the
 * robust-futex word format of futex(2)). pc__lock returns 0, -EOWNERDEAD (held
 * now; its previous owner's thread is gone), -ETIMEDOUT or -EINTR; pc__unlock 0,
 * or -EPERM when the word was not locked. */
#define PC__LOCK_WAITERS 0x80000000u
#define PC__LOCK_TID_MASK 0x3fffffffu
int pc__lock(_Atomic uint32_t *word, int64_t timeout_ns, uint32_t max_spin);
int pc__trylock(_Atomic uint32_t *word);
int pc__unlock(_Atomic uint32_t *word);
/* This thread's id (cached; refreshed in a forked child). */
uint32_t pc__tid(void);

/* One CPU spin-wait hint. */
static inline void pc__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}
#endif
