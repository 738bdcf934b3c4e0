/* Shared regions, atomics, wait/notify and the sync primitives built on them.
 *
 * This header is read twice: by the C compiler, and by cffi's cdef parser when the
 * build generates pyclusterc._native (python/build_native.py strips the lines that
 * start with '#'). So it holds plain declarations only: no macros, no inline code.
 *
 * Every function returns >= 0 or -errno unless it says otherwise.
 */
#ifndef PC_SHARED_H
#define PC_SHARED_H
#include <stddef.h>
#include <stdint.h>

/* ---- shared regions ---------------------------------------------------------
 * A region is one memfd or POSIX shm object: a header (waiter table, see
 * region.c) followed by the user's bytes at offset pc_region_header_size().
 * Python maps the data part itself (mmap module, for the buffer protocol); C maps
 * the header with pc_region_map_header().
 */
size_t pc_region_header_size(void);
/* Create an anonymous (name == NULL) or named region of data_size bytes; returns
 * the fd (O_CLOEXEC). Errors: -EINVAL bad name or size, -EEXIST, -ENAMETOOLONG,
 * -ENOMEM size past what memory (or /dev/shm) can hold, others from the syscalls. */
int pc_region_create(const char *name, uint64_t data_size);
/* Open a named region; returns the fd. -ENOENT when missing, -EINVAL bad name. */
int pc_region_open(const char *name);
/* Read and validate the header of an fd; returns the data size via *data_size.
 * -EPROTO when the object is not a pyclusterc region. */
int pc_region_data_size(int fd, uint64_t *data_size);
/* Map the header of a region; NULL and *err = -errno on failure. */
void *pc_region_map_header(int fd, int *err);
int pc_region_unmap_header(void *header);
int pc_region_unlink(const char *name);
/* Longest name accepted, without the leading '/' that shm_open wants. */
int pc_region_name_max(void);

/* ---- atomics (seq_cst, as ECMAScript requires) ------------------------------
 * base is the start of a typed array's elements, index is pre-checked by the caller.
 * RMW ops return the old value; store returns the stored value. */
int8_t pc_load_i8(void *base, size_t index);
uint8_t pc_load_u8(void *base, size_t index);
int16_t pc_load_i16(void *base, size_t index);
uint16_t pc_load_u16(void *base, size_t index);
int32_t pc_load_i32(void *base, size_t index);
uint32_t pc_load_u32(void *base, size_t index);
int64_t pc_load_i64(void *base, size_t index);
uint64_t pc_load_u64(void *base, size_t index);

int8_t pc_store_i8(void *base, size_t index, int8_t value);
uint8_t pc_store_u8(void *base, size_t index, uint8_t value);
int16_t pc_store_i16(void *base, size_t index, int16_t value);
uint16_t pc_store_u16(void *base, size_t index, uint16_t value);
int32_t pc_store_i32(void *base, size_t index, int32_t value);
uint32_t pc_store_u32(void *base, size_t index, uint32_t value);
int64_t pc_store_i64(void *base, size_t index, int64_t value);
uint64_t pc_store_u64(void *base, size_t index, uint64_t value);

int8_t pc_add_i8(void *base, size_t index, int8_t value);
uint8_t pc_add_u8(void *base, size_t index, uint8_t value);
int16_t pc_add_i16(void *base, size_t index, int16_t value);
uint16_t pc_add_u16(void *base, size_t index, uint16_t value);
int32_t pc_add_i32(void *base, size_t index, int32_t value);
uint32_t pc_add_u32(void *base, size_t index, uint32_t value);
int64_t pc_add_i64(void *base, size_t index, int64_t value);
uint64_t pc_add_u64(void *base, size_t index, uint64_t value);

int8_t pc_sub_i8(void *base, size_t index, int8_t value);
uint8_t pc_sub_u8(void *base, size_t index, uint8_t value);
int16_t pc_sub_i16(void *base, size_t index, int16_t value);
uint16_t pc_sub_u16(void *base, size_t index, uint16_t value);
int32_t pc_sub_i32(void *base, size_t index, int32_t value);
uint32_t pc_sub_u32(void *base, size_t index, uint32_t value);
int64_t pc_sub_i64(void *base, size_t index, int64_t value);
uint64_t pc_sub_u64(void *base, size_t index, uint64_t value);

int8_t pc_and_i8(void *base, size_t index, int8_t value);
uint8_t pc_and_u8(void *base, size_t index, uint8_t value);
int16_t pc_and_i16(void *base, size_t index, int16_t value);
uint16_t pc_and_u16(void *base, size_t index, uint16_t value);
int32_t pc_and_i32(void *base, size_t index, int32_t value);
uint32_t pc_and_u32(void *base, size_t index, uint32_t value);
int64_t pc_and_i64(void *base, size_t index, int64_t value);
uint64_t pc_and_u64(void *base, size_t index, uint64_t value);

int8_t pc_or_i8(void *base, size_t index, int8_t value);
uint8_t pc_or_u8(void *base, size_t index, uint8_t value);
int16_t pc_or_i16(void *base, size_t index, int16_t value);
uint16_t pc_or_u16(void *base, size_t index, uint16_t value);
int32_t pc_or_i32(void *base, size_t index, int32_t value);
uint32_t pc_or_u32(void *base, size_t index, uint32_t value);
int64_t pc_or_i64(void *base, size_t index, int64_t value);
uint64_t pc_or_u64(void *base, size_t index, uint64_t value);

int8_t pc_xor_i8(void *base, size_t index, int8_t value);
uint8_t pc_xor_u8(void *base, size_t index, uint8_t value);
int16_t pc_xor_i16(void *base, size_t index, int16_t value);
uint16_t pc_xor_u16(void *base, size_t index, uint16_t value);
int32_t pc_xor_i32(void *base, size_t index, int32_t value);
uint32_t pc_xor_u32(void *base, size_t index, uint32_t value);
int64_t pc_xor_i64(void *base, size_t index, int64_t value);
uint64_t pc_xor_u64(void *base, size_t index, uint64_t value);

int8_t pc_exchange_i8(void *base, size_t index, int8_t value);
uint8_t pc_exchange_u8(void *base, size_t index, uint8_t value);
int16_t pc_exchange_i16(void *base, size_t index, int16_t value);
uint16_t pc_exchange_u16(void *base, size_t index, uint16_t value);
int32_t pc_exchange_i32(void *base, size_t index, int32_t value);
uint32_t pc_exchange_u32(void *base, size_t index, uint32_t value);
int64_t pc_exchange_i64(void *base, size_t index, int64_t value);
uint64_t pc_exchange_u64(void *base, size_t index, uint64_t value);

int8_t pc_compare_exchange_i8(void *base, size_t index, int8_t expected, int8_t replacement);
uint8_t pc_compare_exchange_u8(void *base, size_t index, uint8_t expected, uint8_t replacement);
int16_t pc_compare_exchange_i16(void *base, size_t index, int16_t expected, int16_t replacement);
uint16_t pc_compare_exchange_u16(void *base, size_t index, uint16_t expected, uint16_t replacement);
int32_t pc_compare_exchange_i32(void *base, size_t index, int32_t expected, int32_t replacement);
uint32_t pc_compare_exchange_u32(void *base, size_t index, uint32_t expected, uint32_t replacement);
int64_t pc_compare_exchange_i64(void *base, size_t index, int64_t expected, int64_t replacement);
uint64_t pc_compare_exchange_u64(void *base, size_t index, uint64_t expected, uint64_t replacement);

/* 1 when an access of that many bytes is lock-free here, else 0. */
int pc_is_lock_free(int size);
/* A spin-wait hint, repeated `iterations` times (x86 PAUSE, arm YIELD). */
void pc_pause(uint32_t iterations);

/* ---- wait / notify (ECMAScript Atomics.wait / Atomics.notify) ---------------
 * Waiters are registered in the region header's waiter table, keyed by the cell's
 * byte offset in the data part, so notify's count is exact (JS semantics) for 32-
 * and 64-bit cells alike, across threads and processes.
 */
enum { PC_WAIT_OK = 0, PC_WAIT_NOT_EQUAL = 1, PC_WAIT_TIMED_OUT = 2 };
/* Check the cell (width 4 or 8 bytes) against expected and, when equal, take a
 * waiter slot (*slot) keyed by byte_offset, the cell's offset in the region's data
 * (what notify names). Returns PC_WAIT_OK (registered), PC_WAIT_NOT_EQUAL, or
 * -EAGAIN when the waiter table is full. */
int pc_wait_register(void *header, void *cell, uint64_t byte_offset, int width,
                     int64_t expected, int *slot);
/* Block on a registered slot: polls it at most `spin` times (fewer, or none, when
 * spinning does not pay: one usable CPU, or recent waits on this cell that the
 * spin did not catch; see spin.c), then sleeps in the kernel.
 * timeout_ns < 0 waits forever. Returns PC_WAIT_OK (notified), PC_WAIT_TIMED_OUT,
 * or -EINTR (run the signal handlers, then call again with the time left). The
 * slot stays taken either way: the caller always ends with pc_wait_release, in a
 * `finally`, so a slot is freed exactly once whatever a signal handler raises. */
int pc_wait_block(void *header, int slot, int64_t timeout_ns, uint32_t spin);
/* The three steps in one call, for the common case, on element `index` of a typed
 * array whose elements (`width` bytes each) start at `base`, base_offset bytes into
 * the region's data. Returns PC_WAIT_OK, PC_WAIT_NOT_EQUAL or PC_WAIT_TIMED_OUT
 * with the slot freed; -EAGAIN (table full) or -EINVAL (width) with no slot taken
 * (*slot is -1 then); or -EINTR with the slot still taken in *slot: the caller runs
 * its signal handlers, then resumes with pc_wait_block and ends with
 * pc_wait_release (in a `finally`), as for the separate steps. */
int pc_wait(void *header, void *base, uint64_t base_offset, uint64_t index, int width,
            int64_t expected, int64_t timeout_ns, uint32_t spin, int *slot);
/* Free the slot; returns PC_WAIT_OK when a notify counted this waiter (the wait
 * reports "ok", even if it had timed out a moment before), else PC_WAIT_TIMED_OUT. */
int pc_wait_release(void *header, int slot);
/* Wake the thread blocked on a slot without notifying it (an asyncio task was
 * cancelled); its pc_wait_block returns PC_WAIT_TIMED_OUT. */
int pc_wait_abort(void *header, int slot);
/* Wake up to count waiters (count < 0: all) on the cell, oldest first; returns
 * how many were woken. */
int pc_notify(void *header, uint64_t byte_offset, int64_t count);
/* How many waiters are registered on the cell (for tests and diagnostics). */
int pc_waiters(void *header, uint64_t byte_offset);

/* ---- sync primitives: each one lives in 32-bit words of a region ------------
 * All take the address of their first word (4-byte aligned). Timeouts: ns, < 0
 * forever. `spin` bounds the polls before sleeping, as for pc_wait_block. Blocking
 * calls return 0 on success, -ETIMEDOUT, or -EINTR (call again with the time left).
 *
 * mutex: one word, 0 when unlocked, else the owner's thread id | 0x80000000 when
 * others may sleep on it (futex(2)'s robust word format). Robust: when the owner's
 * thread is gone (its process died), the next pc_mutex_lock takes the mutex and
 * returns -EOWNERDEAD instead of 0; the mutex is then held by the caller. A
 * sleeper notices a dead owner within half a second at most. Any thread may
 * unlock (threading.Lock semantics). */
/* The primitives' layouts, for Python to size and read them (ffi.sizeof, fields);
 * the C code accesses the same words atomically (pinned with static asserts in
 * sync.c). */
struct pc_mutex { uint32_t word; };
struct pc_cond { uint32_t sequence; uint32_t waiters; };
struct pc_sem { uint32_t value; uint32_t sleepers; };
struct pc_barrier { uint32_t parties; uint32_t state; uint32_t broken; };
int pc_mutex_lock(void *mutex, int64_t timeout_ns, uint32_t spin);
/* 0 or -EBUSY: one compare-and-swap, no look at the owner (pc_mutex_lock with
 * timeout 0 looks: 0, -EOWNERDEAD or -ETIMEDOUT; it finds an owner that is gone,
 * but not yet one whose process is a zombie, which a lock that naps does). */
int pc_mutex_trylock(void *mutex);
/* -EPERM when the mutex is not locked. */
int pc_mutex_unlock(void *mutex);
/* The owner's thread id, 0 when unlocked (for diagnostics and tests). */
int pc_mutex_owner(void *mutex);
/* cond: two words (sequence, waiters). The mutex is released while waiting and
 * re-acquired before return (also on timeout and -EINTR); -EOWNERDEAD when the
 * re-acquire took it over from a dead owner; -EPERM when the mutex was not held. */
int pc_cond_wait(void *cond, void *mutex, int64_t timeout_ns);
int pc_cond_notify(void *cond, int64_t count);
/* sem: two words (value, sleepers). No owner, so no robustness: a process that dies
 * between acquire and release takes its unit with it. release: -EOVERFLOW when the
 * value would pass 2**32-1. */
void pc_sem_init(void *sem, uint32_t value);
int pc_sem_acquire(void *sem, int64_t timeout_ns, uint32_t spin);
int pc_sem_release(void *sem, uint32_t n);
int pc_sem_value(void *sem);
/* barrier: three words (parties, state = generation << 16 | arrived, broken).
 * pc_barrier_init: -EINVAL parties outside 1..65535, -EEXIST set up for another
 * count. pc_barrier_arrive returns the arrival index (parties - 1 for the arrival
 * that releases the others) and the generation to pass to pc_barrier_await, or
 * -EPIPE when broken; pc_barrier_await returns 0 once that generation is released
 * (with acquire order: what the other parties wrote before arriving is visible),
 * -ETIMEDOUT (the barrier is then broken), -EPIPE when it is broken, or -EINTR. */
int pc_barrier_init(void *barrier, uint32_t parties);
int pc_barrier_arrive(void *barrier, uint32_t *generation);
int pc_barrier_await(void *barrier, uint32_t generation, int64_t timeout_ns, uint32_t spin);
/* Break the barrier (a party leaves without waiting: an exception, abort()); every
 * waiter and later arrival then gets -EPIPE. */
void pc_barrier_abort(void *barrier);

#endif
