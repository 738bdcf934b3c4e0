/* waitlist.c: wait/notify over the waiter table, exact counts across processes,
 * dead waiters, a full table. */
#include "config.h"
#include "pc_shared.h"
#include "test.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

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

int main(void) {
  RUN_TEST(test_wait_notify_64bit_across_processes);
  RUN_TEST(test_waiter_table_full_and_dead_waiters);
  return 0;
}
