/* A minimal test harness in libuv's shape (test/task.h): ASSERT_* macros that
 * print the failing expression with file and line and exit non-zero, and a
 * RUN_TEST list in main(). Each test_*.c is one ctest executable. */
#ifndef PC_TEST_H
#define PC_TEST_H
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

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

#define RUN_TEST(fn)                                                                  \
  do {                                                                                \
    fprintf(stderr, "- %s\n", #fn);                                                   \
    fn();                                                                             \
  } while (0)
#endif
