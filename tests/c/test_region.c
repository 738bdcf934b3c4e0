/* region.c: create, validate, name, open, unlink. */
#include "config.h"
#include "pc_shared.h"
#include "test.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

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

int main(void) {
  RUN_TEST(test_create_and_validate);
  RUN_TEST(test_named_region);
  return 0;
}
