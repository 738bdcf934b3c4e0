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
/* Time left until a deadline from pc__deadline: < 0 forever, 0 expired. */
int64_t pc__remaining(int64_t deadline_ns);
/* One CPU spin-wait hint. */
static inline void pc__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}
#endif
