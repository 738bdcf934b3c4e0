/* A minimal test harness in libuv's shape (test/task.h): ASSERT_* macros that
 * print the failing expression with file and line and exit non-zero, and a
 * RUN_TEST list in main(). Each test_*.c is one ctest executable. */
#ifndef PC_TEST_H
#define PC_TEST_H
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "pc_shared.h"
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define ASSERT(expr)                                                                  \
  do {                                                                                \
    if (!(expr)) {                                                                    \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #expr);    \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

#define ASSERT_INT_BASE(a, op, b)                                                     \
  do {                                                                                \
    int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                                     \
    if (!(a_ op b_)) {                                                                \
      fprintf(stderr, "%s:%d: %s %s %s failed (%" PRId64 " vs %" PRId64 ")\n",        \
              __FILE__, __LINE__, #a, #op, #b, a_, b_);                               \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

#define ASSERT_EQ(a, b) ASSERT_INT_BASE(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_BASE(a, !=, b)
#define ASSERT_GE(a, b) ASSERT_INT_BASE(a, >=, b)
#define ASSERT_LT(a, b) ASSERT_INT_BASE(a, <, b)

/* Open fds of this process, for leak checks around a case. */
static inline int count_open_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  struct dirent *e;
  int n = 0;
  ASSERT(dir != NULL);
  while ((e = readdir(dir)) != NULL) n += e->d_name[0] != '.';
  closedir(dir);
  return n - 1; /* the directory's own fd */
}

/* The data part of a region (what Python maps), for the shared-memory tests. */
static inline char *map_data(int fd, uint64_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)pc_region_header_size());
  ASSERT(p != MAP_FAILED);
  return p;
}

/* Reap n children; each must have exited 0. */
static inline void expect_children_ok(const pid_t *pids, int n) {
  int i, status;
  for (i = 0; i < n; i++) {
    ASSERT_EQ(waitpid(pids[i], &status, 0), pids[i]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      fprintf(stderr, "child %d: status 0x%x\n", (int)pids[i], status);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
}

#define RUN_TEST(fn)                                                                  \
  do {                                                                                \
    fprintf(stderr, "- %s\n", #fn);                                                   \
    fn();                                                                             \
  } while (0)
#endif
