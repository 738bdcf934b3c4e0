"""The scoreboard slot's response counters (struct pc_score_slot, csrc/dispatch.c)."""
import subprocess
import sys

import pytest

from pyclusterc.cluster.scoreboard import BUCKET_BOUNDS, SLOT_BYTES, ScoreSlot
from pyclusterc.shared.buffer import SharedBuffer

pytestmark = pytest.mark.timeout(30)


def test_record_counts_classes_buckets_and_sum():
    slot = ScoreSlot(SharedBuffer(SLOT_BYTES * 2), 1)
    for status, micros in ((200, 100), (204, 3_000), (404, 100), (503, 2_000_000), (99, 1), (700, 1)):
        slot.record(status, micros)
    score = slot.snapshot()
    assert score["status_classes"] == {"2xx": 2, "4xx": 1, "5xx": 1, "other": 2}
    assert score["latency_buckets"][-1] == (float("inf"), 6)
    assert score["latency_sum"] == pytest.approx(2.003202)
    # cumulative, and each duration in the first bucket whose bound holds it
    counts = [count for _, count in score["latency_buckets"]]
    assert counts == sorted(counts)
    first_over_3ms = next(i for i, bound in enumerate(BUCKET_BOUNDS) if bound >= 0.003)
    assert counts[first_over_3ms] >= 5


def test_record_outlives_the_slot_object_and_its_buffer_name():
    """record is the C function bound to the slot's memory: a server may keep only it.
    Before, its pointer was a cast that did not keep the mapping alive: once the slot
    object and the buffer were dropped, the next record wrote to unmapped memory."""
    code = (
        "import gc\n"
        "from pyclusterc.cluster.scoreboard import SLOT_BYTES, ScoreSlot\n"
        "from pyclusterc.shared.buffer import SharedBuffer\n"
        "record = ScoreSlot(SharedBuffer(SLOT_BYTES * 4), 3).record\n"
        "gc.collect()\n"
        "for _ in range(1000):\n"
        "    record(200, 50)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_one_call_at_each_end_of_a_request():
    """WSGI with metrics: request_started_at counts the request in flight and returns
    time.monotonic()'s clock; request_finished_since ends it and records it."""
    import time
    slot = ScoreSlot(SharedBuffer(SLOT_BYTES), 0)
    before = time.monotonic()
    started = slot.request_started_at()
    assert before <= started <= time.monotonic()
    assert slot.snapshot()["inflight"] == 1
    slot.request_finished_since(404, started - 0.030)  # began 30 ms ago
    score = slot.snapshot()
    assert (score["inflight"], score["requests"]) == (0, 1)
    assert score["status_classes"] == {"4xx": 1}
    assert 0.03 <= score["latency_sum"] < 5
    counts = dict(score["latency_buckets"])
    assert counts[0.025] == 0 and counts[float("inf")] == 1
