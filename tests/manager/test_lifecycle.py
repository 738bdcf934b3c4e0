"""A process manager you can trust, end to end with real processes: reloads, restarts,
scaling and replacements under keep-alive load drop nothing; a failing or hanging new
version rolls back; the primary survives fd leaks, a full fd table, hostile control
clients and every signal; worker ids stay 0..N-1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from loadgen import Load
from procs import APPS, Cli, free_port, get, wait_until

pytestmark = pytest.mark.timeout(120)


def start(runtime_dir, target, *extra, instances=2, env=None, wait=True, prefix=()):
    port = free_port()
    cli = Cli("run", target, "-i", instances, "-b", f"127.0.0.1:{port}", "--app-dir", APPS,
              "--name", "t", *extra, prefix=prefix,
              env={"XDG_RUNTIME_DIR": runtime_dir, **(env or {})})
    cli.port = port
    if wait:
        try:
            cli.wait_line(f"ready, {instances} workers ready", timeout=60)
        except BaseException:
            cli.kill()
            raise
    return cli


def ctl(runtime_dir, *args, timeout=90):
    out = subprocess.run([sys.executable, "-m", "pyclusterc", *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "XDG_RUNTIME_DIR": runtime_dir})
    return out.returncode, out.stdout, out.stderr


def status(runtime_dir):
    from pyclusterc.manager import control
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = runtime_dir
    try:
        return control.request("t", "status", timeout=10)
    finally:
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR")
        else:
            os.environ["XDG_RUNTIME_DIR"] = old


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



APPS_UNDER_TEST = [("lifecycle_app:app", {}), ("lifecycle_app:wsgi", {"LIFECYCLE_WSGI": "1"})]


# ---- nothing dropped: keep-alive clients sending back to back, no retries -------------

def command_under_load(runtime_dir, cli, *command, keep_alive=True, requests=200):
    """Run a control command while clients send back to back; the Load, once it has
    served `requests` more after the command returned."""
    with Load(cli.port, clients=6 if keep_alive else 4, keep_alive=keep_alive) as load:
        load.wait_for(requests)
        code, out, err = ctl(runtime_dir, *command)
        assert code == 0, err
        done = load.ok
        load.wait_for(done + requests)
    return load


@pytest.mark.parametrize("target,env", APPS_UNDER_TEST, ids=["asgi", "wsgi"])
@pytest.mark.parametrize("sched", ["rr", "least"])
def test_rolling_reload_under_keep_alive_load_drops_nothing(runtime_dir, target, env, sched):
    with start(runtime_dir, target, "--sched", sched, env=env) as cli:
        before = {w["pid"] for w in status(runtime_dir)["workers"]}
        load = command_under_load(runtime_dir, cli, "reload", "t")
        assert load.failed == 0, load.summary()
        after = {w["pid"] for w in status(runtime_dir)["workers"] if w["state"] == "serving"}
        assert len(after) == 2 and not before & after


@pytest.mark.parametrize("operation", [("restart",), ("scale", 1)], ids=["restart", "scale-1"])
def test_restart_and_scale_down_under_keep_alive_load_drop_nothing(runtime_dir, operation):
    with start(runtime_dir, "lifecycle_app:app") as cli:
        load = command_under_load(runtime_dir, cli, *operation, "t")
        assert load.failed == 0, load.summary()


def test_max_requests_replacement_under_load_drops_nothing(runtime_dir):
    with start(runtime_dir, "lifecycle_app:wsgi", "--max-requests", "300",
               env={"LIFECYCLE_WSGI": "1"}, instances=2) as cli:
        with Load(cli.port, clients=4, keep_alive=True) as load:
            cli.wait_line("--max-requests 300; replacing it", timeout=60)
            cli.wait_line("replace worker", timeout=60)
            done = load.ok
            load.wait_for(done + 500)
        assert load.failed == 0, load.summary()


def test_new_connections_during_a_reload_are_all_served(runtime_dir):
    with start(runtime_dir, "lifecycle_app:app") as cli:
        load = command_under_load(runtime_dir, cli, "reload", "t", keep_alive=False, requests=50)
        assert load.failed == 0, load.summary()


# ---- readiness: a slow start is not traffic's problem, a failed one rolls back ---------

def test_a_slow_starting_app_gets_no_traffic_until_it_started(runtime_dir, tmp_path):
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"delay": 0}))
    with start(runtime_dir, "lifecycle_app:app", env={"LIFECYCLE_FILE": str(behaviour)}) as cli:
        with Load(cli.port, clients=4, keep_alive=True) as load:
            load.wait_for(200)
            steady = sorted(load.latencies)[int(len(load.latencies) * 0.99)]
            behaviour.write_text(json.dumps({"delay": 2.0}))
            mark = len(load.latencies)
            code, out, err = ctl(runtime_dir, "reload", "t")
            assert code == 0, err
            during = load.latencies[mark:]
        assert load.failed == 0, load.summary()
        assert max(during) < steady + 0.1, f"max {max(during):.3f} s during the reload, steady p99 {steady:.3f} s"


@pytest.mark.parametrize("version,reason", [({"fail": True}, "lifespan startup failed"),
                                            ({"delay": 30}, "not ready within --listen-timeout")],
                         ids=["lifespan-fails", "never-ready"])
def test_a_reload_to_a_version_that_does_not_start_rolls_back(runtime_dir, tmp_path, version, reason):
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({}))
    with start(runtime_dir, "lifecycle_app:app", "--listen-timeout", "2",
               env={"LIFECYCLE_FILE": str(behaviour)}) as cli:
        before = {w["pid"] for w in status(runtime_dir)["workers"]}
        with Load(cli.port, clients=4, keep_alive=True) as load:
            load.wait_for(100)
            behaviour.write_text(json.dumps(version))
            code, out, err = ctl(runtime_dir, "reload", "t")
            done = load.ok
            load.wait_for(done + 100)
        assert code != 0 and reason in err, (code, out, err)
        assert load.failed == 0, load.summary()
        assert {w["pid"] for w in status(runtime_dir)["workers"]} == before
        assert cli.proc.poll() is None


def test_a_startup_that_fails_stops_the_cluster_with_the_apps_error(runtime_dir, tmp_path):
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"fail": True}))
    with start(runtime_dir, "lifecycle_app:app", env={"LIFECYCLE_FILE": str(behaviour)}, wait=False) as cli:
        code = cli.finish(60)
    assert code == 1
    assert not any("ready," in line for line in cli.stdout), cli.stdout
    assert any("lifespan startup failed" in line for line in cli.stderr), cli.stderr


@pytest.mark.parametrize("during", ["start", "reload"])
def test_term_during_a_slow_start_or_a_reload_exits_0_without_a_traceback(runtime_dir, tmp_path, during):
    behaviour = tmp_path / "behaviour.json"
    behaviour.write_text(json.dumps({"delay": 0 if during == "reload" else 3}))
    with start(runtime_dir, "lifecycle_app:app", env={"LIFECYCLE_FILE": str(behaviour)},
               wait=during == "reload") as cli:
        if during == "start":
            cli.wait_line("2 workers (", timeout=30)
            time.sleep(0.5)
        else:
            behaviour.write_text(json.dumps({"delay": 3}))
            cli.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
        cli.proc.send_signal(signal.SIGTERM)
        code = cli.finish(30)
    assert code == 0, (cli.stdout, cli.stderr)
    assert not any("Traceback" in line for line in cli.stdout + cli.stderr), cli.stderr


# ---- the primary never dies ------------------------------------------------------------

def test_reloads_and_kills_leave_the_primarys_fds_and_threads_where_they_were(runtime_dir):
    # The kills come faster than --min-uptime: not a crash loop to stop on here.
    with start(runtime_dir, "lifecycle_app:app", "--max-restarts", "1000") as cli:
        pid = cli.proc.pid
        fds, threads = fd_count(pid), thread_count(pid)
        for _ in range(20):
            code, out, err = ctl(runtime_dir, "reload", "t")
            assert code == 0, err
        for _ in range(40):
            victim = status(runtime_dir)["workers"][0]
            os.kill(victim["pid"], signal.SIGKILL)
            wait_until(lambda: victim["pid"] not in {w["pid"] for w in status(runtime_dir)["workers"]}
                       and len(status(runtime_dir)["workers"]) == 2
                       and all(w["state"] == "serving" for w in status(runtime_dir)["workers"]),
                       what="a replacement")
        assert get(cli.port)[0] == 200
        assert abs(fd_count(pid) - fds) <= 2, (fds, fd_count(pid), os.listdir(f"/proc/{pid}/fd"))
        assert abs(thread_count(pid) - threads) <= 2, (threads, thread_count(pid))


@pytest.mark.parametrize("target,env", APPS_UNDER_TEST, ids=["asgi", "wsgi"])
def test_the_primary_imports_the_servers_code_once_for_every_worker(runtime_dir, target, env):
    """Workers are forked from the primary: with the server's code (uvicorn's protocols,
    asyncio, httptools) imported there before the first fork, a worker started in a
    reload or as a replacement does not import it again (~36 ms of CPU per ASGI worker,
    taken from the serving workers' CPUs during a reload). httptools' parser, a shared
    object, shows in the primary's own memory map only when the primary imported it."""
    with start(runtime_dir, target, env=env) as cli:
        with open(f"/proc/{cli.proc.pid}/maps") as f:
            mapped = f.read()
        assert "httptools" in mapped and "_asyncio" in mapped
        code, out, err = ctl(runtime_dir, "reload", "t")
        assert code == 0, err
        assert get(cli.port)[0] == 200


def _limited(soft):
    """A prefix that runs the command with RLIMIT_NOFILE's soft limit lowered."""
    code = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, "
            f"({soft}, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); os.execv(sys.argv[1], sys.argv[1:])")
    return (sys.executable, "-c", code)


def test_a_full_fd_table_pauses_the_primary_instead_of_spinning_and_it_recovers(runtime_dir):
    with start(runtime_dir, "lifecycle_app:app", prefix=_limited(64)) as cli:
        pid = cli.proc.pid
        path = os.path.join(runtime_dir, "pyclusterc", "t.sock")
        hogs = []
        try:
            while fd_count(pid) < 64 and len(hogs) < 200:  # idle control clients hold fds
                hog = socket.socket(socket.AF_UNIX)
                hog.connect(path)
                hogs.append(hog)
                time.sleep(0.005)
            for _ in range(20):  # and more knock at the control socket and the port
                for family, address in ((socket.AF_UNIX, path), (socket.AF_INET, ("127.0.0.1", cli.port))):
                    extra = socket.socket(family)
                    extra.settimeout(0.2)
                    try:
                        extra.connect(address)
                    except OSError:
                        pass
                    hogs.append(extra)
            used = cpu_seconds(pid)
            time.sleep(3)
            assert cpu_seconds(pid) - used < 0.3, "the primary spins with its fd table full"
            os.kill(status_pid(cli), signal.SIGKILL)  # a crash now: its replacement needs fds
            time.sleep(1)
            assert cli.proc.poll() is None
        finally:
            for hog in hogs:
                hog.close()
        wait_until(lambda: len(status(runtime_dir)["workers"]) == 2 and all(
            w["state"] == "serving" for w in status(runtime_dir)["workers"]), 30, "recovery")
        assert get(cli.port)[0] == 200


def status_pid(cli):
    """A worker's pid, from the process table (the control socket may be full)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(cli.proc.pid)], capture_output=True, text=True)
    return int(out.stdout.split()[0])


@pytest.mark.parametrize("payload", [b"[" * 3000 + b"\n", b"x" * (10 << 20) + b"\n", bytes(range(256)) * 4 + b"\n",
                                     b'{"cmd": "scale", "count": "many"}\n', b"\xff\xfe\n"],
                         ids=["deep-nesting", "10MiB-line", "binary", "bad-count", "not-utf8"])
def test_malformed_control_input_gets_an_error_and_the_cluster_serves_on(runtime_dir, payload):
    with start(runtime_dir, "plain_wsgi:app") as cli:
        path = os.path.join(runtime_dir, "pyclusterc", "t.sock")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            try:
                sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed on us mid-send: also an answer
            try:
                reply = sock.recv(65536)
            except ConnectionResetError:
                reply = b""
        if reply:
            assert json.loads(reply)["ok"] is False
        assert cli.proc.poll() is None
        assert get(cli.port)[0] == 200
        assert status(runtime_dir)["workers"]


def test_idle_control_clients_are_timed_out_and_capped(runtime_dir):
    with start(runtime_dir, "plain_wsgi:app") as cli:
        path = os.path.join(runtime_dir, "pyclusterc", "t.sock")
        idle = []
        try:
            for _ in range(40):
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(path)
                idle.append(sock)
            # Past the cap, a client is told so at once; the others still get status.
            answers = []
            for sock in idle[-5:]:
                sock.settimeout(5)
                answers.append(sock.recv(4096))
            assert all(b"too many control connections" in a for a in answers), answers
            idle[0].settimeout(15)
            assert b"no complete request" in idle[0].recv(4096)  # timed out after 10 s idle
        finally:
            for sock in idle:
                sock.close()
        assert status(runtime_dir)["workers"] and get(cli.port)[0] == 200


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGPIPE"])
def test_signals_with_no_stop_meaning_leave_the_primary_serving(runtime_dir, name):
    with start(runtime_dir, "plain_wsgi:app") as cli:
        cli.proc.send_signal(getattr(signal, name))
        time.sleep(0.5)
        assert cli.proc.poll() is None
        assert get(cli.port)[0] == 200


# ---- identity ----------------------------------------------------------------------------

def test_worker_ids_stay_0_to_n_minus_1_across_reloads_crashes_and_scaling(runtime_dir):
    def indexes():
        return sorted(w["id"] for w in status(runtime_dir)["workers"] if w["state"] == "serving")

    def served_indexes():
        return {json.loads(get(cli.port)[2])["index"] for _ in range(20)}

    with start(runtime_dir, "lifecycle_app:app") as cli:
        assert indexes() == [0, 1] and served_indexes() == {"0", "1"}
        assert ctl(runtime_dir, "reload", "t")[0] == 0
        wait_until(lambda: indexes() == [0, 1], what="ids after reload")
        os.kill(status(runtime_dir)["workers"][0]["pid"], signal.SIGKILL)
        wait_until(lambda: indexes() == [0, 1], what="ids after a crash")
        assert ctl(runtime_dir, "scale", 3, "t")[0] == 0
        wait_until(lambda: indexes() == [0, 1, 2], what="ids after scale up")
        assert ctl(runtime_dir, "scale", 1, "t")[0] == 0
        wait_until(lambda: indexes() == [0], what="ids after scale down")
        assert served_indexes() == {"0"}


def test_unnamed_clusters_get_their_own_names_and_a_bare_command_finds_the_one(runtime_dir, tmp_path):
    env = {"XDG_RUNTIME_DIR": runtime_dir}
    port = free_port()
    with Cli("run", "plain_wsgi:app", "-i", 1, "-b", f"127.0.0.1:{port}", "--app-dir", APPS, env=env) as cli:
        cli.wait_line("ready, 1 workers ready")
        assert not os.path.exists(os.path.join(runtime_dir, "pyclusterc", "default.sock"))
        code, out, err = ctl(runtime_dir, "status")
        assert code == 0 and "plain_wsgi" in out, err
        with Cli("run", "lifecycle_app:wsgi", "-i", 1, "-b", f"127.0.0.1:{free_port()}", "--app-dir", APPS,
                 env={**env, "LIFECYCLE_WSGI": "1"}) as other:
            other.wait_line("ready, 1 workers ready")
            code, out, err = ctl(runtime_dir, "status")
            assert code != 0 and "2 clusters are running" in err, err


def test_zero_instances_is_an_error():
    code = subprocess.run([sys.executable, "-m", "pyclusterc", "run", "plain_wsgi:app", "-i", "0"],
                          capture_output=True, text=True, cwd=APPS, timeout=30)
    assert code.returncode == 2 and "0 workers cannot serve" in code.stderr
    assert len(code.stderr.strip().splitlines()) == 1
