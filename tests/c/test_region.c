/* Shared regions and atomics, without Python: create, map, share across fork,
 * wrap-around, exact wait/notify counts across processes. */
#include "config.h"
#include "pc_shared.h"
#include "test.h"

#include <errno.h>
#include <signal.h>
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

static void expect_children_ok(const pid_t *pids, int n) {
  int i, status;
  for (i = 0; i < n; i++) {
    ASSERT_EQ(waitpid(pids[i], &status, 0), pids[i]);
    ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
}

/* A waiter killed while waiting is neither counted by notify nor keeps its slot;
 * a full table says -EAGAIN. */
static void test_waiter_table_full_and_dead_waiters(void) {
  int fd = pc_region_create(NULL, 64), err, i, slot, status;
  char *data = map_data(fd, 64);
  void *header = pc_region_map_header(fd, &err);
  static int slots[4096]; /* more than the table holds */
  pid_t pid;
  ASSERT(header != NULL);
  pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (pc_wait_register(header, data, 0, 4, 0, &slot) != PC_WAIT_OK) _exit(1);
    pc_wait_block(header, slot, -1, 0);
    _exit(2);
  }
  while (pc_waiters(header, 0) < 1) usleep(1000);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_EQ(pc_notify(header, 0, -1), 0);
  ASSERT_EQ(pc_waiters(header, 0), 0);

  for (i = 0; (slot = pc_wait_register(header, data, 4, 4, 0, &slots[i])) == PC_WAIT_OK; i++)
    ;
  ASSERT_EQ(slot, -EAGAIN);
  ASSERT_GE(i, 1000);
  ASSERT_EQ(pc_notify(header, 4, 1), 1);
  ASSERT_EQ(pc_wait_release(header, slots[0]), PC_WAIT_OK);
  while (i-- > 1) ASSERT_EQ(pc_wait_release(header, slots[i]), PC_WAIT_TIMED_OUT);
  ASSERT_EQ(pc_waiters(header, 4), 0);
  pc_region_unmap_header(header);
  munmap(data, 64);
  close(fd);
}

/* A non-atomic counter under pc_mutex ends exact across processes. */
static void test_mutex_across_fork(void) {
  int fd = pc_region_create(NULL, 64), i, k;
  char *data = map_data(fd, 64);
  volatile uint32_t *counter = (uint32_t *)(data + 8);
  pid_t pids[2];
  ASSERT_EQ(pc_mutex_unlock(data), -EPERM);
  ASSERT_EQ(pc_mutex_trylock(data), 0);
  ASSERT_EQ(pc_mutex_trylock(data), -EBUSY);
  ASSERT_EQ(pc_mutex_lock(data, 1000000, 10), -ETIMEDOUT);
  ASSERT_EQ(pc_mutex_unlock(data), 0);
  for (k = 0; k < 2; k++) {
    pids[k] = fork();
    ASSERT_GE(pids[k], 0);
    if (pids[k] == 0) {
      for (i = 0; i < 200000; i++) {
        if (pc_mutex_lock(data, -1, k ? 0 : 100) != 0) _exit(1);
        *counter = *counter + 1;
        if (pc_mutex_unlock(data) != 0) _exit(2);
      }
      _exit(0);
    }
  }
  expect_children_ok(pids, 2);
  ASSERT_EQ(*counter, 400000);
  ASSERT_EQ(pc_load_u32(data, 0), 0);
  munmap(data, 64);
  close(fd);
}

/* Semaphore ping-pong and a condition wait that times out holding the mutex again. */
static void test_sem_and_cond_across_fork(void) {
  int fd = pc_region_create(NULL, 64), i;
  char *data = map_data(fd, 64);
  void *ping = data, *pong = data + 8, *mutex = data + 16, *cond = data + 24;
  pid_t pid;
  ASSERT_EQ(pc_sem_init(ping, 0), 0);
  ASSERT_EQ(pc_sem_init(pong, 0), 0);
  ASSERT_EQ(pc_sem_acquire(ping, 1000000, 10), -ETIMEDOUT);
  pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    for (i = 0; i < 5000; i++) {
      if (pc_sem_acquire(ping, 5000000000LL, 50) != 0) _exit(1);
      pc_sem_release(pong, 1);
    }
    _exit(0);
  }
  for (i = 0; i < 5000; i++) {
    ASSERT_EQ(pc_sem_release(ping, 1), 0);
    ASSERT_EQ(pc_sem_acquire(pong, 5000000000LL, 50), 0);
  }
  expect_children_ok(&pid, 1);
  ASSERT_EQ(pc_sem_value(ping), 0);
  ASSERT_EQ(pc_sem_release(ping, UINT32_MAX), 0);
  ASSERT_EQ(pc_sem_release(ping, 1), -EOVERFLOW);

  ASSERT_EQ(pc_mutex_lock(mutex, -1, 0), 0);
  ASSERT_EQ(pc_cond_wait(cond, mutex, 1000000), -ETIMEDOUT);
  ASSERT_EQ(pc_mutex_trylock(mutex), -EBUSY); /* re-acquired on timeout */
  ASSERT_EQ(pc_mutex_unlock(mutex), 0);
  ASSERT_EQ(pc_cond_wait(cond, mutex, 0), -EPERM); /* mutex not held */
  munmap(data, 64);
  close(fd);
}

static int barrier_rounds(void *barrier, int rounds) {
  uint32_t generation;
  int r, index;
  for (r = 0; r < rounds; r++) {
    if ((index = pc_barrier_arrive(barrier, &generation)) < 0) return 1;
    if (index != 2 && pc_barrier_await(barrier, generation, 5000000000LL, 50) != 0) return 2;
  }
  return 0;
}

/* Three processes through many rounds; then a timeout breaks the barrier for all. */
static void test_barrier_across_fork(void) {
  int fd = pc_region_create(NULL, 64), k;
  char *data = map_data(fd, 64);
  uint32_t generation;
  pid_t pids[2];
  ASSERT_EQ(pc_barrier_init(data, 0), -EINVAL);
  ASSERT_EQ(pc_barrier_init(data, 3), 0);
  ASSERT_EQ(pc_barrier_init(data, 3), 0);
  ASSERT_EQ(pc_barrier_init(data, 4), -EEXIST);
  for (k = 0; k < 2; k++) {
    pids[k] = fork();
    ASSERT_GE(pids[k], 0);
    if (pids[k] == 0) _exit(barrier_rounds(data, 70000));
  }
  ASSERT_EQ(barrier_rounds(data, 70000), 0); /* past 2**16 generations: wraps */
  expect_children_ok(pids, 2);

  ASSERT_EQ(pc_barrier_arrive(data, &generation), 0);
  ASSERT_EQ(pc_barrier_await(data, generation, 1000000, 10), -ETIMEDOUT);
  ASSERT_EQ(pc_barrier_arrive(data, &generation), -EPIPE);
  munmap(data, 64);
  close(fd);
}

int main(void) {
  RUN_TEST(test_create_and_validate);
  RUN_TEST(test_named_region);
  RUN_TEST(test_wraparound);
  RUN_TEST(test_add_across_fork);
  RUN_TEST(test_wait_notify_64bit_across_processes);
  RUN_TEST(test_waiter_table_full_and_dead_waiters);
  RUN_TEST(test_mutex_across_fork);
  RUN_TEST(test_sem_and_cond_across_fork);
  RUN_TEST(test_barrier_across_fork);
  return 0;
}
