"""node:cluster semantics, each written from Node's own test of it
(nodejs/node test/parallel/test-cluster-*.js) and checked against Node 20's behaviour.

Node.js is MIT-licensed: Copyright Node.js contributors. All rights reserved.
Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify,
merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
permit persons to whom the Software is furnished to do so, subject to the following
conditions: The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS",
WITHOUT WARRANTY OF ANY KIND."""
import sys
import textwrap

import pytest

from procs import ClusterProcess

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pyclusterc import cluster

    def say(**event):  # one write: under PYTHONUNBUFFERED, print() writes the newline apart
        sys.stdout.write(json.dumps(event) + "\\n")
        sys.stdout.flush()

    case = os.environ["CASE"]
    if cluster.is_primary:
        if case == "args":
            cluster.setup_primary(fork=True, args=["--x", "y"])
            say(event="settings", settings=cluster.settings)
        elif case == "settings":
            cluster.setup_primary(args=["a"])
            say(event="settings", settings=cluster.settings)
            cluster.setup_primary(silent=True)
            say(event="settings", settings=cluster.settings)
            sys.exit(0)
        worker = cluster.fork()
        def on_online():
            if case == "primary-disconnect":
                say(event="disconnect-returns-worker", same=worker.disconnect() is worker)
            elif case == "primary-kill":
                worker.kill()
        worker.on("online", on_online)
        worker.on("disconnect", lambda: say(event="disconnect", state=worker.state))
        worker.on("exit", lambda code, sig: say(event="exit", code=code, signal=sig,
                                                after_disconnect=worker.exited_after_disconnect,
                                                state=worker.state))
        cluster.run()
    else:
        if case == "args":
            say(event="argv", argv=sys.argv[1:])
        elif case == "self-kill":
            cluster.worker.kill()
        elif case == "self-disconnect":
            cluster.worker.disconnect()
        elif case == "destroy":
            say(event="has-destroy", ok=callable(getattr(cluster.worker, "destroy", None)))
            cluster.worker.destroy()
        elif case == "listen-then-disconnect":
            listener = cluster.listen(("127.0.0.1", 0))
            cluster.worker.on("disconnect", lambda: say(event="worker-saw-disconnect"))
            cluster.worker.disconnect()
""")


def run_case(tmp_path, case, *wanted):
    script = tmp_path / "case.py"
    script.write_text(SCRIPT)
    with ClusterProcess([sys.executable, str(script)], env={"CASE": case}) as primary:
        return [primary.wait_for(event) for event in wanted], primary


def test_state_is_disconnected_when_disconnect_fires_and_disconnect_returns_the_worker(tmp_path):
    # test-cluster-worker-disconnect.js, test-cluster-worker-disconnect-on-error.js
    (same, disconnect, exit_event), _ = run_case(tmp_path, "primary-disconnect",
                                                 "disconnect-returns-worker", "disconnect", "exit")
    assert same["same"] is True
    assert disconnect["state"] == "disconnected"
    assert exit_event["code"] == 0 and exit_event["after_disconnect"] is True and exit_event["state"] == "dead"


def test_primary_side_kill_leaves_exited_after_disconnect_false_as_node_20(tmp_path):
    # test-cluster-worker-kill.js (Node 20: exitedAfterDisconnect false, signal SIGTERM)
    (exit_event,), _ = run_case(tmp_path, "primary-kill", "exit")
    assert exit_event["signal"] == "SIGTERM" and exit_event["after_disconnect"] is False


@pytest.mark.parametrize("case", ["self-kill", "self-disconnect"])
def test_a_worker_that_kills_or_disconnects_itself_exits_0_after_disconnect(tmp_path, case):
    # test-cluster-worker-exit.js, test-cluster-worker-kill-signal.js (worker side)
    (exit_event,), _ = run_case(tmp_path, case, "exit")
    assert exit_event["code"] == 0 and exit_event["signal"] is None
    assert exit_event["after_disconnect"] is True


def test_destroy_exists_in_workers(tmp_path):
    # test-cluster-worker-destroy.js
    (has, exit_event), _ = run_case(tmp_path, "destroy", "has-destroy", "exit")
    assert has["ok"] is True and exit_event["code"] == 0


def test_setup_primary_args_reach_forked_workers_without_exec(tmp_path):
    # test-cluster-setup-primary-argv.js
    (settings, argv), _ = run_case(tmp_path, "args", "settings", "argv")
    assert argv["argv"] == ["--x", "y"]
    assert settings["settings"]["args"] == ["--x", "y"]


def test_settings_hold_the_effective_defaults_after_setup_primary(tmp_path):
    # test-cluster-setup-primary-cumulative.js
    script = tmp_path / "case.py"
    script.write_text(SCRIPT)
    with ClusterProcess([sys.executable, str(script)], env={"CASE": "settings"}) as primary:
        first = primary.wait_for("settings")
        second = primary.wait_for("settings")["settings"]
    settings = first["settings"]
    assert settings["exec"] == str(script) and settings["args"] == ["a"] and settings["silent"] is False
    assert "exec_argv" in settings
    assert second["args"] == ["a"] and second["silent"] is True  # cumulative


def test_a_disconnect_listener_added_right_after_listen_never_misses_the_event(tmp_path):
    # test-cluster-disconnect-race.js / test-cluster-worker-disconnect.js (worker side)
    for _ in range(5):
        (_, exit_event), _ = run_case(tmp_path, "listen-then-disconnect", "worker-saw-disconnect", "exit")
        assert exit_event["code"] == 0
