/* spin.c: the adaptive spin budget (none with one usable CPU; a per-cell budget
 * that falls after lost spins and grows back after won ones). */
#include "config.h"
#include "internal.h"
#include "test.h"

#include <sched.h>

/* One usable CPU: never spin. Several: a budget within bounds that falls after
 * lost spins and grows back after won ones. */
static void test_spin_budget(void) {
  static _Atomic uint32_t cell;
  cpu_set_t all, one;
  uint32_t b, i;
  ASSERT_EQ(pc__spin_budget(&cell, 0), 0);
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  CPU_ZERO(&one);
  for (i = 0; i < CPU_SETSIZE; i++)
    if (CPU_ISSET(i, &all)) {
      CPU_SET(i, &one);
      break;
    }
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  for (i = 0; i < 300; i++) (void)pc__spin_budget(&cell, 4000); /* the CPUs are re-read */
  for (i = 0; i < 200; i++) ASSERT_EQ(pc__spin_budget(&cell, 4000), 0);
  ASSERT_EQ(sched_setaffinity(0, sizeof all, &all), 0);
  if (CPU_COUNT(&all) < 2) {
    fprintf(stderr, "  (one usable CPU: the multi-CPU half skipped)\n");
    return;
  }
  for (i = 0; i < 600; i++) (void)pc__spin_budget(&cell, 4000);
  for (i = 0; i < 20; i++) { /* lost spins */
    b = pc__spin_budget(&cell, 4000);
    ASSERT(b <= 4000);
    pc__spin_done(&cell, 4000, b, b, 0);
  }
  b = pc__spin_budget(&cell, 4000);
  if (b > 32) b = pc__spin_budget(&cell, 4000); /* that one was a probe */
  ASSERT_EQ(b, 32);
  pc__spin_done(&cell, 4000, b, 30, 1);
  pc__spin_done(&cell, 4000, 8 * b, 200, 1); /* a probe won at 200 */
  b = pc__spin_budget(&cell, 4000);
  if (b > 432) b = pc__spin_budget(&cell, 4000);
  ASSERT_EQ(b, 432);
}

int main(void) {
  RUN_TEST(test_spin_budget);
  return 0;
}
