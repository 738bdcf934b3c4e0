"""Shared memory and atomics: SharedBuffer, typed arrays, Atomics, and the sync primitives
that live in shared memory (Mutex, Condition, Semaphore, Barrier; OwnerDied when a
Mutex's owner died holding it).

May import: ``_lowlevel``.
"""
from .atomics import Atomics
from .buffer import (BigInt64Array, BigUint64Array, Float32Array, Float64Array, Int8Array,
                     Int16Array, Int32Array, SharedBuffer, TypedArray, Uint8Array, Uint16Array,
                     Uint32Array)
from .sync import Barrier, Condition, Mutex, OwnerDied, Semaphore

__all__ = [
    "Atomics", "SharedBuffer", "TypedArray",
    "Int8Array", "Uint8Array", "Int16Array", "Uint16Array", "Int32Array", "Uint32Array",
    "BigInt64Array", "BigUint64Array", "Float32Array", "Float64Array",
    "Mutex", "Condition", "Semaphore", "Barrier", "OwnerDied",
]
