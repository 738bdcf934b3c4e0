"""Background apps end to end: `start` from an ecosystem file returns once the apps are
ready and exits (the terminal is gone); the apps serve on; list, logs, reload, stop,
save/resurrect, delete; a killed primary shows as errored; a failing app's own error."""
import json
import re
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from procs import APPS, Cli, EXAMPLES, free_port, get, pid_alive, wait_until
from apphome import home  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)



def serves(port):
    try:
        return get(port, timeout=5)[0] == 200
    except OSError:
        return False


ENV_APP = """
import json, os


def app(environ, start_response):
    body = json.dumps(dict(os.environ)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


def ecosystem(tmp_path, web_port, api_port, kind="pyclusterc.toml"):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "envapp.py").write_text(ENV_APP)
    header = "[[tool.pyclusterc.apps]]" if kind == "pyproject.toml" else "[[apps]]"
    path = tmp_path / kind
    path.write_text(f"""
{header}
name = "web"
app = "envapp:app"
cwd = "web"
instances = 2
bind = "127.0.0.1:{web_port}"
access_log = true
env = {{ GREETING = "hi", DEBUG = true }}

{header}
name = "api"
app = "hello_asgi:app"
cwd = "{EXAMPLES}"
instances = 1
bind = ["127.0.0.1:{api_port}"]
kill_timeout = "500ms"
""")
    return path


def test_ecosystem_lifecycle(home, tmp_path):
    web, api = free_port(), free_port()
    path = ecosystem(tmp_path, web, api)
    out = home.ok("start", path, cwd=tmp_path)
    assert "web: online" in out and "api: online" in out
    # `start` has exited: the apps run on in their own sessions.
    assert serves(web) and serves(api)
    for _ in range(5):
        assert get(web)[0] == 200
    env = json.loads(get(web, "/")[2])
    assert env["GREETING"] == "hi" and env["DEBUG"] == "true"
    rows = home.listing()
    assert {n: (r["state"], r["workers"]) for n, r in rows.items()} == {"web": ("online", 2), "api": ("online", 1)}
    assert rows["web"]["memory"] > 0 and rows["web"]["uptime"] >= 0 and rows["web"]["cpu"] is not None
    keeper = home.record("web")["keeper"]
    assert os.getsid(keeper) == keeper and os.getsid(home.record("web")["pid"]) == keeper  # its own session

    text = home.ok("logs", "web", "--lines", "50")
    assert re.search(r"^web \| \S+ \[primary\] pyclusterc: ready, 2 workers", text, re.M), text  # stamped
    assert sum("GET /" in line for line in text.splitlines()) >= 5, text  # the access log lines
    limited = home.ok("logs", "web", "--lines", "2").splitlines()
    assert len([l for l in limited if l.startswith("web |")]) == 2
    records = [json.loads(l) for l in home.ok("logs", "--json", "--lines", "3").splitlines()]
    assert {r["app"] for r in records} == {"web", "api"} and all("message" in r for r in records)

    before = home.listing()["web"]["pid"]
    assert "replaced 2 worker(s)" in home.ok("reload", "web")
    assert serves(web) and home.listing()["web"]["pid"] == before  # same primary, new workers

    assert "saved 2 app(s)" in home.ok("save")
    assert "web: stopped" in home.ok("stop", "web")
    rows = home.listing()
    assert rows["web"]["state"] == "stopped" and rows["api"]["state"] == "online"
    assert not serves(web)
    home.ok("stop", "all")
    assert {r["state"] for r in home.listing().values()} == {"stopped"}
    assert not serves(api)

    assert "resurrected 2 app(s)" in home.ok("resurrect")
    assert serves(web) and serves(api)
    assert {r["state"] for r in home.listing().values()} == {"online"}

    assert "deleted" in home.ok("delete", "all")
    assert home.listing() == {}
    assert not serves(web) and not serves(api)
    assert (home.home / "logs" / "web-out.log").exists()  # delete keeps the logs, as PM2


def test_only_and_pyproject(home, tmp_path):
    web, api = free_port(), free_port()
    path = ecosystem(tmp_path, web, api, kind="pyproject.toml")
    out = home.ok("start", path, "--only", "api", cwd=tmp_path)
    assert "api: online" in out and "web" not in out
    assert set(home.listing()) == {"api"} and serves(api) and not serves(web)
    code, _, err = home.pc("start", path, "--only", "nope", cwd=tmp_path)
    assert code == 2 and "--only 'nope'" in err and "web, api" in err


def test_killed_primary_shows_as_errored(home):
    port = free_port()
    home.ok("start", "plain_wsgi:app", "-i", 1, "-b", f"127.0.0.1:{port}", "--name", "victim")
    pid = home.record("victim")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: home.listing()["victim"]["state"] == "errored", 20, "errored")
    code, out, _ = home.pc("list")
    assert code == 0 and "victim: errored: killed by SIGKILL" in out
    # The whole session killed (no exit record left behind): still errored, never gone.
    assert "victim: started" in home.ok("restart", "victim")
    keeper = home.record("victim")["keeper"]
    os.killpg(keeper, signal.SIGKILL)
    wait_until(lambda: not pid_alive(home.record("victim")["pid"]), 20, "the primary gone")
    row = home.listing()["victim"]
    assert row["state"] == "errored" and "without an exit record" in row["reason"]


def test_a_failing_app_reports_its_own_error(home):
    code, out, err = home.pc("start", "broken_import:app", "-i", 1, "-b", f"127.0.0.1:{free_port()}")
    assert code == 1, (out, err)
    errors = [l for l in err.splitlines() if l.startswith("pyclusterc: error:")]
    assert errors[-1].startswith("pyclusterc: error: app 'broken_import' did not start:")
    assert "deliberate failure at import time" in err
    assert home.listing()["broken_import"]["state"] == "errored"


def test_bad_input_is_one_line(home, tmp_path):
    for args, expected in (
            (("start", "plain_wsgi:app", "--sched", "nope"), "invalid choice: 'nope'"),
            (("start",), "missing TARGET or FILE"),
            (("stop", "ghost"), "no app named 'ghost'"),
            (("logs", "ghost"), "no app named 'ghost'"),
            (("start", "plain_wsgi:app", "--name", "bad/name"), "invalid cluster name"),
            (("resurrect",), "nothing saved yet")):
        code, out, err = home.pc(*args)
        lines = err.strip().splitlines()
        assert code in (1, 2) and len(lines) == 1 and expected in lines[0], (args, out, err)
    bad = tmp_path / "pyclusterc.toml"
    bad.write_text('[[apps]]\napp = "plain_wsgi:app"\nworkers = 3\n')
    code, _, err = home.pc("start", bad)
    assert code == 1 and "unknown setting 'workers'" in err and "instances" in err and len(err.splitlines()) == 1
    bad.write_text('[[apps]]\nname = "x"\n')
    code, _, err = home.pc("start", bad)
    assert code == 1 and "missing `app`" in err


def test_logs_follow(home):
    port = free_port()
    home.ok("start", "plain_wsgi:app", "-i", 1, "-b", f"127.0.0.1:{port}", "--access-log", "--name", "f")
    follower = subprocess.Popen([sys.executable, "-m", "pyclusterc.cli.apps", "logs", "f", "--follow",
                                 "--lines", "0"], stdout=subprocess.PIPE, text=True, env=home.env,
                                start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in follower.stdout], daemon=True).start()
    try:
        # Requests until one shows up: the follower may still be starting when the first is made.
        deadline = time.monotonic() + 30
        seen = None
        while seen is None and time.monotonic() < deadline:
            get(port, "/followed?x=1")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen = line if "/followed" in line else None
        assert seen is not None and seen.startswith("f | "), seen
    finally:
        os.killpg(follower.pid, signal.SIGKILL)
        follower.wait(10)


def test_list_shows_foreground_clusters_too(home):
    port = free_port()
    with Cli("run", "plain_wsgi:app", "-i", 1, "-b", f"127.0.0.1:{port}", "--name", "fg", "--app-dir", APPS,
             env={"XDG_RUNTIME_DIR": str(home.runtime), "PYCLUSTERC_HOME": str(home.home)}) as cli:
        cli.wait_line("ready, 1 workers")
        row = home.listing()["fg"]
        assert row["state"] == "online" and row["app"] is False and row["workers"] == 1
        assert "fg: a foreground `pyclusterc run`" in home.ok("list")
        assert "saved 0 app(s)" in home.ok("save")  # save records background apps only
