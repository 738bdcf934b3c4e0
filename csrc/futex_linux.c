#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t pc__now_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

int64_t pc__deadline(int64_t timeout_ns) {
  if (timeout_ns < 0) return -1;
  return pc__now_ns() + timeout_ns;
}

int64_t pc__remaining(int64_t deadline_ns) {
  int64_t left;
  if (deadline_ns < 0) return -1;
  left = deadline_ns - pc__now_ns();
  return left > 0 ? left : 0;
}

/* FUTEX_WAIT without FUTEX_PRIVATE_FLAG: the word may be mapped by several
 * processes. EINTR is returned, not retried: a signal must reach Python. */
int pc__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns) {
  struct timespec ts, *tsp = NULL;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
    tsp = &ts;
  }
  if (syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, tsp, NULL, 0) == 0)
    return 0;
  if (errno == EAGAIN) return 0; /* the word had already changed */
  return -errno;
}

int pc__futex_wake(_Atomic uint32_t *word, int count) {
  long n = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count, NULL, NULL, 0);
  return n < 0 ? -errno : (int)n;
}
