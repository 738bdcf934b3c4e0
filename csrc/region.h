/* The layout at the start of every region. Other processes read it: the layout is
 * pinned with static asserts and versioned. */
#ifndef PC_REGION_H
#define PC_REGION_H
#include "internal.h"

#define PC_REGION_MAGIC 0x31524350594c4350ULL /* "PCLYPCR1" little-endian */
/* 2: the table lock holds its owner's thread id (robust, sync.c) */
#define PC_REGION_VERSION 2
/* 64 KiB keeps the data part page-aligned on 4K and 64K page systems; the pages of
 * the waiter table are only touched (and only cost memory) as waiters use them. */
#define PC_REGION_HEADER_SIZE 65536
#define PC_WAITER_SLOTS 2046

enum pc_waiter_state {
  PC_WAITER_FREE = 0,
  PC_WAITER_WAITING = 1,  /* registered, spinning in user space */
  PC_WAITER_SLEEPING = 2, /* in FUTEX_WAIT on `state`: a notifier must wake it */
  PC_WAITER_NOTIFIED = 3,
  PC_WAITER_ABORTED = 4,  /* woken without a notify (asyncio cancellation) */
};

struct pc_waiter {
  _Atomic uint32_t state; /* the futex word the waiter sleeps on */
  int32_t pid;            /* owner, to reclaim slots of dead processes */
  uint64_t byte_offset;   /* the cell waited on, from the start of the data */
  uint64_t ticket;        /* FIFO order for notify(count) */
  uint64_t reserved;
};

struct pc_region_header {
  uint64_t magic;
  uint64_t data_size;
  uint32_t version;
  uint32_t header_size;
  _Atomic uint32_t lock;  /* guards the waiter table: a pc__lock word (internal.h) */
  uint32_t slot_limit;    /* slots at and past this index are free */
  uint64_t next_ticket;
  uint8_t reserved[24];
  struct pc_waiter waiters[PC_WAITER_SLOTS];
};

PC_STATIC_ASSERT(sizeof(struct pc_waiter) == 32, "waiter slot layout is shared");
PC_STATIC_ASSERT(offsetof(struct pc_region_header, lock) == 24, "header layout is shared");
PC_STATIC_ASSERT(offsetof(struct pc_region_header, waiters) == 64, "header layout is shared");
PC_STATIC_ASSERT(sizeof(struct pc_region_header) <= PC_REGION_HEADER_SIZE,
                 "waiter table must fit the header");
#endif
