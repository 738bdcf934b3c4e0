"""What every child process we fork shares: its body (run, flush, ``os._exit`` with the
code Python would have exited with) and how its wait status reads afterwards."""
import os
import signal
import sys
import traceback

__all__ = ["run_child", "exit_code_of", "decode_wait_status", "format_traceback"]


def exit_code_of(exc):
    """The exit status a SystemExit stands for, as the interpreter computes it."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def run_child(body, uncaught_code=1):
    """Run ``body()`` in a freshly forked child and never return: its int result (or
    SystemExit) is the exit status; an uncaught exception prints its traceback and exits
    with ``uncaught_code``. Daemon threads and atexit hooks inherited from the parent must
    not run, hence ``os._exit``."""
    code = uncaught_code
    try:
        result = body()
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        code = exit_code_of(e)
    except BaseException:  # noqa: BLE001 - anything the child's code raised ends it here
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def decode_wait_status(status):
    """(exit_code, signal_name): one of them is None. ``status`` is what waitpid gives."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return None, signal.Signals(signum).name
        except ValueError:
            return None, f"SIG{signum}"
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return 0, None


def format_traceback(exc):
    """The whole traceback of ``exc`` as text (to travel to another process)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
