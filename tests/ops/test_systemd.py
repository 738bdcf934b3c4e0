"""Unit files for `startup systemd`: their directives, ExecStart quoting, and
`systemd-analyze verify` on what we write (where systemd-analyze is installed)."""
import os
import shutil
import subprocess
import sys

import pytest

from pyclusterc.manager.systemd import (SystemdError, enable_commands, exec_quote, render_unit,
                                        unit_name, write_units)
from procs import APPS, free_port
from apphome import home  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(90)

SPEC = {"name": "web", "argv": ["plain_wsgi:app", "-i", "2", "--name", "web"], "cwd": APPS,
        "env": {"PYTHONPATH": "/srv/my app", "RATIO": "100%"}}


def directives(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_directives():
    d = directives(render_unit(SPEC, watchdog_sec=10, python=sys.executable))
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"] and d["KillMode"] == ["mixed"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"] == ["10"] and d["WantedBy"] == ["multi-user.target"]
    assert d["ExecStart"] == [f"{sys.executable} -m pyclusterc run plain_wsgi:app -i 2 --name web"]
    assert d["Environment"] == ['"PYTHONPATH=/srv/my app"', '"RATIO=100%%"']
    user = directives(render_unit(SPEC, user=True, run_as="nobody"))
    assert user["WantedBy"] == ["default.target"] and "User" not in user and "WatchdogSec" not in user
    assert directives(render_unit(SPEC, run_as="www"))["User"] == ["www"]


def test_exec_quote():
    assert exec_quote("plain") == "plain"
    assert exec_quote("a b") == '"a b"'
    assert exec_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert exec_quote("$HOME") == "$$HOME" and exec_quote("50%") == "50%%"


def test_write_units_and_commands(tmp_path):
    paths = write_units([SPEC, {**SPEC, "name": "api"}], str(tmp_path / "units"), user=True)
    assert [os.path.basename(p) for p in paths] == [unit_name("web"), unit_name("api")]
    assert enable_commands(["web", "api"], user=True)[:2] == [
        "systemctl --user daemon-reload", "systemctl --user enable --now pyclusterc-web.service pyclusterc-api.service"]
    assert enable_commands(["web"], user=False)[0] == "systemctl daemon-reload"
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemdError, match="cannot create"):
        write_units([SPEC], str(tmp_path / "file" / "sub"))


def verify(path):
    out = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True, timeout=60)
    # verify exits 0 for many problems it only warns about: any line naming our file is one.
    complaints = [l for l in (out.stdout + out.stderr).splitlines() if os.path.basename(path) in l]
    return out.returncode, complaints


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    for user in (False, True):
        path, = write_units([SPEC], str(tmp_path / f"u{user}"), user=user, watchdog_sec=5)
        assert verify(path) == (0, []), open(path).read()
    # The check itself can fail: a broken unit is reported.
    broken = tmp_path / "broken" / unit_name("web")
    broken.parent.mkdir()
    broken.write_text(render_unit(SPEC).replace("KillMode=mixed", "KillMode=bogus"))
    assert verify(str(broken))[1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_startup_command_for_saved_apps(home, tmp_path):
    code, _, err = home.pc("startup", "systemd", "--user", "--dir", tmp_path / "u")
    assert code == 1 and "nothing saved yet" in err
    port = free_port()
    home.ok("start", "plain_wsgi:app", "-i", 1, "-b", f"127.0.0.1:{port}", "--name", "svc")
    home.ok("save")
    out = home.ok("startup", "systemd", "--user", "--dir", tmp_path / "u", "--watchdog-sec", 20)
    path = str(tmp_path / "u" / unit_name("svc"))
    assert f"wrote {path}" in out and "systemctl --user enable --now pyclusterc-svc.service" in out
    assert "pyclusterc stop svc" in out  # the background copy holds the port
    d = directives(open(path).read())
    assert d["WorkingDirectory"] == [APPS] and d["WatchdogSec"] == ["20"]
    assert any(v.startswith('"PYTHONPATH=') for v in d["Environment"])  # captured at `start`
    assert "--name svc" in d["ExecStart"][0] and f"-b 127.0.0.1:{port}" in d["ExecStart"][0]
    assert verify(path) == (0, [])
