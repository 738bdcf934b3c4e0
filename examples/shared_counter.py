"""Shared memory and atomics across processes: the quick-start demo.

Forks one process per CPU; each adds to one Int32Array cell 200,000 times with
Atomics, then all meet at a Barrier, and the last one wakes the parent with
Atomics.notify. The total is exact: no lock, no lost update.

    python examples/shared_counter.py
"""
import os
import time

from pyclusterc import Atomics, Barrier, Int32Array, SharedBuffer

ADDS = 200_000


def main():
    workers = len(os.sched_getaffinity(0))
    memory = SharedBuffer(64)
    counter = Int32Array(memory, 0, 2)          # [0] the total, [1] processes finished
    barrier = Barrier(memory, 16, workers)
    started = time.perf_counter()
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            add = counter.add                    # the method form is the fast path
            for _ in range(ADDS):
                add(0, 1)
            barrier.wait(timeout=30)
            if counter.add(1, 1) == workers - 1:
                Atomics.notify(counter, 1)
            os._exit(0)
        pids.append(pid)
    while (done := Atomics.load(counter, 1)) < workers:
        Atomics.wait(counter, 1, done, timeout=30)
    elapsed = time.perf_counter() - started
    for pid in pids:
        os.waitpid(pid, 0)
    total = Atomics.load(counter, 0)
    print(f"{workers} processes x {ADDS:,} Atomics.add -> {total:,} "
          f"({'exact' if total == workers * ADDS else 'WRONG'}) in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
