#include "config.h"
#include "pc_process.h"

#include <errno.h>
#include <sys/prctl.h>
#include <unistd.h>

int pc_die_with_parent(int signal, int parent_pid) {
  if (prctl(PR_SET_PDEATHSIG, signal) < 0) return -errno;
  if (getppid() != parent_pid) return -ESRCH;
  return 0;
}
