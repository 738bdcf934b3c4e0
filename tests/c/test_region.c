/* Shared regions and atomics, without Python: create, map, share across fork,
 * wrap-around, exact wait/notify counts across processes. */
#include "config.h"
#include "pc_shared.h"
#include "test.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static char *map_data(int fd, uint64_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)pc_region_header_size());
  ASSERT(p != MAP_FAILED);
  return p;
}

static void test_create_and_validate(void) {
  uint64_t size = 0;
  int fd = pc_region_create(NULL, 100);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pc_region_data_size(fd, &size), 0);
  ASSERT_EQ(size, 100);
  ASSERT_EQ(pc_region_create(NULL, 0), -EINVAL);
  ASSERT_EQ(pc_region_create(NULL, UINT64_MAX / 2), -ENOMEM);
  ASSERT_EQ(pc_region_create("a/b", 8), -EINVAL);
  ASSERT_EQ(pc_region_open("pyclusterc-ctest-missing"), -ENOENT);
  close(fd);
}

static void test_named_region(void) {
  char name[64];
  uint64_t size = 0;
  int fd, fd2;
  snprintf(name, sizeof name, "pyclusterc-ctest-%d", (int)getpid());
  fd = pc_region_create(name, 4096);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pc_region_create(name, 4096), -EEXIST);
  fd2 = pc_region_open(name);
  ASSERT_GE(fd2, 0);
  ASSERT_EQ(pc_region_data_size(fd2, &size), 0);
  ASSERT_EQ(size, 4096);
  ASSERT_EQ(pc_region_unlink(name), 0);
  ASSERT_EQ(pc_region_open(name), -ENOENT);
  close(fd);
  close(fd2);
}

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

/* notify's count is exact for a 64-bit cell whose low half never changes. */
static void test_wait_notify_64bit_across_processes(void) {
  int fd = pc_region_create(NULL, 64), err, status, i, slot;
  char *data = map_data(fd, 64);
  void *header = pc_region_map_header(fd, &err);
  pid_t pids[3];
  ASSERT(header != NULL);
  for (i = 0; i < 3; i++) {
    pids[i] = fork();
    ASSERT_GE(pids[i], 0);
    if (pids[i] == 0) {
      int rc = pc_wait_register(header, data + 8, 8, 8, 0, &slot);
      if (rc != PC_WAIT_OK) _exit(10 + rc);
      rc = pc_wait_block(header, slot, 5000000000LL, 0);
      _exit(pc_wait_release(header, slot) == PC_WAIT_OK && rc == PC_WAIT_OK ? 0 : 3);
    }
  }
  while (pc_waiters(header, 8) < 3) usleep(1000);
  pc_store_i64(data, 1, (int64_t)1 << 40); /* only the high half changes */
  ASSERT_EQ(pc_notify(header, 8, 2), 2);
  ASSERT_EQ(pc_waiters(header, 8), 1);
  ASSERT_EQ(pc_notify(header, 8, -1), 1);
  ASSERT_EQ(pc_notify(header, 8, -1), 0);
  for (i = 0; i < 3; i++) {
    ASSERT_EQ(waitpid(pids[i], &status, 0), pids[i]);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  ASSERT_EQ(pc_wait_register(header, data + 8, 8, 8, 0, &slot), PC_WAIT_NOT_EQUAL);
  ASSERT_EQ(pc_wait_register(header, data + 8, 8, 8, (int64_t)1 << 40, &slot), PC_WAIT_OK);
  ASSERT_EQ(pc_wait_block(header, slot, 1000000, 10), PC_WAIT_TIMED_OUT);
  ASSERT_EQ(pc_wait_release(header, slot), PC_WAIT_TIMED_OUT);
  pc_region_unmap_header(header);
  munmap(data, 64);
  close(fd);
}

int main(void) {
  RUN_TEST(test_create_and_validate);
  RUN_TEST(test_named_region);
  RUN_TEST(test_wraparound);
  RUN_TEST(test_add_across_fork);
  RUN_TEST(test_wait_notify_64bit_across_processes);
  return 0;
}
