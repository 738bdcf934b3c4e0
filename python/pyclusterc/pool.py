"""Kept for old imports: WorkerPool lives in ``pyclusterc.workers``."""
from .workers.pool import WorkerDied, WorkerPool, usable_cpus

__all__ = ["WorkerPool", "WorkerDied", "usable_cpus"]
