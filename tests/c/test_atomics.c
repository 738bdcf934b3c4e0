/* atomics.c: wrap-around and exact counts across processes. */
#include "config.h"
#include "pc_shared.h"
#include "test.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_wraparound(void) {
  int fd = pc_region_create(NULL, 64);
  char *data = map_data(fd, 64);
  ASSERT_EQ(pc_add_i8(data, 0, 127), 0);
  ASSERT_EQ(pc_add_i8(data, 0, 1), 127);
  ASSERT_EQ(pc_load_i8(data, 0), -128);
  ASSERT_EQ(pc_sub_u16(data, 1, 1), 0);
  ASSERT_EQ(pc_load_u16(data, 1), 65535);
  ASSERT_EQ(pc_add_i32(data, 2, INT32_MAX), 0);
  ASSERT_EQ(pc_add_i32(data, 2, 1), INT32_MAX);
  ASSERT_EQ(pc_load_i32(data, 2), INT32_MIN);
  ASSERT(pc_sub_u64(data, 4, 1) == 0);
  ASSERT(pc_load_u64(data, 4) == UINT64_MAX);
  ASSERT_EQ(pc_compare_exchange_i32(data, 3, 1, 5), 0); /* no swap: old value back */
  ASSERT_EQ(pc_compare_exchange_i32(data, 3, 0, 5), 0);
  ASSERT_EQ(pc_load_i32(data, 3), 5);
  munmap(data, 64);
  close(fd);
}

/* Two processes x 1,000,000 adds on one cell end exact. */
static void test_add_across_fork(void) {
  int fd = pc_region_create(NULL, 64), status, i;
  char *data = map_data(fd, 64);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  for (i = 0; i < 1000000; i++) {
    pc_add_i32(data, 0, 1);
    pc_add_i64(data, 1, 1);
  }
  if (pid == 0) _exit(0);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_EQ(pc_load_i32(data, 0), 2000000);
  ASSERT_EQ(pc_load_i64(data, 1), 2000000);
  munmap(data, 64);
  close(fd);
}

int main(void) {
  RUN_TEST(test_wraparound);
  RUN_TEST(test_add_across_fork);
  return 0;
}
