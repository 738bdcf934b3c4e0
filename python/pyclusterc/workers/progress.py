"""``progress(iterable, total=None)``: a progress bar over any iterator of results.

It only wraps an iterator, so it works the same over ``WorkerPool.map``,
``ThreadPoolExecutor.map``, ``as_completed(...)`` or Dask's executor: the Executor
interface stays the stdlib's.
"""
import sys

__all__ = ["progress"]


def progress(iterable, total=None, *, file=None, desc=None):
    """Yield iterable's items while a tqdm bar counts them. ``total`` defaults to
    ``len(iterable)`` when it has one; with no total the bar counts without an end."""
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"progress total must be a whole number >= 0 or None, got {total!r}")
    try:
        from tqdm import tqdm
    except ImportError:    # a declared dependency; a bare install still iterates
        return _counted(iterable, file or sys.stderr)
    return iter(tqdm(iterable, total=total, file=file, desc=desc, unit="task"))


def _counted(iterable, file):
    tty = file.isatty()
    for n, value in enumerate(iterable, 1):
        if tty:
            file.write(f"\r{n} done")
            file.flush()
        yield value
    if tty:
        file.write("\n")
