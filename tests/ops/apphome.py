"""The `home` fixture of the operations tests: a private state directory and runtime
directory per test, and every background app's session killed at the end, whatever the
test did. (Not a conftest.py: tests/shared imports `conftest` by that name.) Use it with
`from apphome import home`."""
import json
import os
import signal
import subprocess
import sys

import pytest

from procs import APPS, EXAMPLES, pid_alive


def started_at(pid):
    """/proc/PID/stat start time: a pid reused by another process does not match."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class Home:
    """PYCLUSTERC_HOME + XDG_RUNTIME_DIR for one test; ``pc(...)`` runs the app commands."""

    def __init__(self, root):
        self.home = root / "home"
        self.runtime = root / "run"
        self.runtime.mkdir(mode=0o700)
        self.env = {**os.environ, "PYCLUSTERC_HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime),
                    "PYTHONPATH": EXAMPLES}

    def pc(self, *args, timeout=90, cwd=APPS):
        """`pyclusterc ARGS` (the background-app commands); (status, stdout, stderr)."""
        out = subprocess.run([sys.executable, "-m", "pyclusterc.cli.apps", *map(str, args)],
                             capture_output=True, text=True, timeout=timeout, cwd=cwd, env=self.env,
                             stdin=subprocess.DEVNULL)
        return out.returncode, out.stdout, out.stderr

    def ok(self, *args, **kw):
        code, out, err = self.pc(*args, **kw)
        assert code == 0, (args, out, err)
        return out

    def listing(self):
        return {row["name"]: row for row in json.loads(self.ok("list", "--json"))}

    def record(self, name):
        with open(self.home / "run" / f"{name}.json") as f:
            return json.load(f)

    def kill_all(self):
        run = self.home / "run"
        if not run.is_dir():
            return
        for entry in run.iterdir():
            try:
                record = json.loads(entry.read_text())
            except ValueError:
                continue
            for key, start in (("keeper", "keeper_start"), ("pid", "pid_start")):
                pid = record.get(key)
                if pid and pid_alive(pid) and started_at(pid) == record.get(start):
                    try:  # the keeper leads the app's session: its group holds every process
                        os.killpg(pid, signal.SIGKILL) if key == "keeper" else os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


@pytest.fixture
def home(tmp_path):
    h = Home(tmp_path)
    yield h
    h.kill_all()
