/* Process helpers for spawning workers (also a cffi cdef: plain declarations). */
#ifndef PC_PROCESS_H
#define PC_PROCESS_H

/* Ask the kernel to send `signal` to this process when its parent exits
 * (PR_SET_PDEATHSIG), then check the parent is still `parent_pid`: a parent that
 * died before the call would never trigger it. -ESRCH when it is already gone. */
int pc_die_with_parent(int signal, int parent_pid);

#endif
