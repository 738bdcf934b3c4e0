/* ECMAScript Atomics on plain memory: every op is seq_cst, as the spec requires.
 * The cells are not declared _Atomic (they are bytes of a shared region, also seen
 * through numpy); casting them is how C11 code operates atomically on such memory
 * with GCC and Clang. */
#include "internal.h"
#include "pc_shared.h"

#define PC_DEFINE_ATOMICS(suffix, type)                                              \
  type pc_load_##suffix(void *base, size_t index) {                                  \
    return atomic_load((_Atomic type *)base + index);                                \
  }                                                                                  \
  type pc_store_##suffix(void *base, size_t index, type value) {                     \
    atomic_store((_Atomic type *)base + index, value);                               \
    return value;                                                                    \
  }                                                                                  \
  type pc_add_##suffix(void *base, size_t index, type value) {                       \
    return atomic_fetch_add((_Atomic type *)base + index, value);                    \
  }                                                                                  \
  type pc_sub_##suffix(void *base, size_t index, type value) {                       \
    return atomic_fetch_sub((_Atomic type *)base + index, value);                    \
  }                                                                                  \
  type pc_and_##suffix(void *base, size_t index, type value) {                       \
    return atomic_fetch_and((_Atomic type *)base + index, value);                    \
  }                                                                                  \
  type pc_or_##suffix(void *base, size_t index, type value) {                        \
    return atomic_fetch_or((_Atomic type *)base + index, value);                     \
  }                                                                                  \
  type pc_xor_##suffix(void *base, size_t index, type value) {                       \
    return atomic_fetch_xor((_Atomic type *)base + index, value);                    \
  }                                                                                  \
  type pc_exchange_##suffix(void *base, size_t index, type value) {                  \
    return atomic_exchange((_Atomic type *)base + index, value);                     \
  }                                                                                  \
  /* Returns the old value whether or not it swapped (JS compareExchange). */        \
  type pc_compare_exchange_##suffix(void *base, size_t index, type expected,         \
                                    type replacement) {                              \
    atomic_compare_exchange_strong((_Atomic type *)base + index, &expected,          \
                                   replacement);                                     \
    return expected;                                                                 \
  }

/* Signed overflow in fetch_add is defined for atomic types (C11 7.17.7.5: two's
 * complement, no undefined results), so wrap-around needs nothing extra. */
PC_DEFINE_ATOMICS(i8, int8_t)
PC_DEFINE_ATOMICS(u8, uint8_t)
PC_DEFINE_ATOMICS(i16, int16_t)
PC_DEFINE_ATOMICS(u16, uint16_t)
PC_DEFINE_ATOMICS(i32, int32_t)
PC_DEFINE_ATOMICS(u32, uint32_t)
PC_DEFINE_ATOMICS(i64, int64_t)
PC_DEFINE_ATOMICS(u64, uint64_t)

int pc_is_lock_free(int size) {
  switch (size) {
    case 1: return ATOMIC_CHAR_LOCK_FREE == 2;
    case 2: return ATOMIC_SHORT_LOCK_FREE == 2;
    case 4: return ATOMIC_INT_LOCK_FREE == 2;
    case 8: return ATOMIC_LLONG_LOCK_FREE == 2;
    default: return 0;
  }
}

void pc_pause(uint32_t iterations) {
  while (iterations--) pc__cpu_relax();
}
