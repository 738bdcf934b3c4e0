/* Feature macros for the whole core. Linux first: the core uses memfd, futex,
 * signalfd, pidfd and SCM_RIGHTS directly. */
#ifndef PC_CONFIG_H
#define PC_CONFIG_H
#ifndef __linux__
#error "pyclusterc's core supports Linux only for now"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#define PC_STATIC_ASSERT(expr, msg) _Static_assert(expr, msg)
#endif
