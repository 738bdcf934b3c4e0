/* What channel.c shares with the dispatch loop: building a framed message in
 * place, so that pc_channel_send (sendmsg) and the loop (sendmmsg) put the same
 * bytes on the wire. */
#ifndef PC_CHANNEL_INTERNAL_H
#define PC_CHANNEL_INTERNAL_H
#include "config.h"
#include "pc_channel.h"

#include <sys/socket.h>
#include <sys/uio.h>

/* One outgoing message: header, iovecs and cmsg space live together so that the
 * msghdr pointing into it stays valid until sendmsg/sendmmsg returns. The union
 * gives the cmsg buffer cmsghdr alignment (nginx ngx_channel.c, libuv). */
struct pc__outmsg {
  struct pc_msg_header header;
  struct iovec iov[2];
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * PC_CHANNEL_MAX_FDS)];
  } cmsg;
};

/* Fill *out and *msg for one message; -EINVAL / -EMSGSIZE on bad arguments. */
int pc__channel_prepare(struct msghdr *msg, struct pc__outmsg *out, uint32_t kind, uint64_t seq,
                        const void *payload, uint32_t length, const int *fds, int nfds);
/* The fds of every SCM_RIGHTS cmsg of a received message into fds[PC_CHANNEL_MAX_FDS]
 * (none closed): 0, or -EBADMSG for any other cmsg or a malformed one. */
int pc__channel_collect_fds(struct msghdr *msg, int *fds, int *nfds);
/* The channel API's errno for a failed sendmsg/sendmmsg: a gone peer is -EPIPE
 * whichever way the kernel says it. */
int pc__channel_send_error(int err);
#endif
