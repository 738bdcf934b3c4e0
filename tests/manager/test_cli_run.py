"""`pyclusterc` command line: settings, CPU counting, and every bad input as one line."""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from pyclusterc._lowlevel import cpus
from pyclusterc.manager import settings as config
from procs import APPS, EXAMPLES, Cli, free_port, get

pytestmark = pytest.mark.timeout(60)


def run_cli(*args, timeout=30, cwd=None, env=None):
    """Run to completion; (status, stdout lines, stderr lines). Killed with its group on timeout."""
    with Cli(*args, cwd=cwd, env={"PYTHONPATH": EXAMPLES, **(env or {})}) as cli:
        code = cli.finish(timeout)
        return code, cli.stdout, cli.stderr


def assert_one_line_error(code, out, err, *expected):
    assert code != 0, (out, err)
    errors = [line for line in err if line.startswith("pyclusterc: error:")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]
    assert not any("died" in line and "starting a new one" in line for line in out), out


def test_version_and_help():
    code, out, _ = run_cli("--version")
    assert code == 0 and out[0].startswith("pyclusterc ")
    code, out, _ = run_cli("run", "--help")
    text = "\n".join(out)
    assert code == 0 and "TARGET" in text and "--instances" in text and "--kill-timeout" in text


def test_console_script_is_installed():
    script = shutil.which("pyclusterc", path=os.path.dirname(sys.executable))
    assert script is not None
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("pyclusterc ")


@pytest.mark.parametrize("args, expected", [
    (["no_such_module_xyz:app"], "no module named 'no_such_module_xyz'"),
    (["plain_wsgi:nope"], "attribute 'nope' not found"),
    (["not_callable:app"], "is not callable"),
    (["plain_wsgi:app", "-i", "zero"], "invalid instance count 'zero'"),
    (["plain_wsgi:app", "-i", "2x"], "invalid instance count"),
    (["plain_wsgi:app", "-b", "nohost"], "invalid --bind 'nohost'"),
    (["plain_wsgi:app", "-b", "127.0.0.1:99999"], "invalid --bind"),
    (["plain_wsgi:app", "-b", "fd://abc"], "fd:// takes a file descriptor number"),
    (["plain_wsgi:app", "-b", "fd://987"], "fd 987 is not an open socket"),
    (["echo_script.py", "--threads", "4"], "conflicting options"),
    (["hello_asgi:app", "--forwarded-allow-ips", "10.0.0.1,nope"], "invalid forwarded-allow-ips entry 'nope'"),
    (["echo_script.py", "--preload"], "conflicting options"),
    (["plain_wsgi:app", "--interface", "script"], "conflicting options"),
    (["plain_wsgi:app", "--sched", "fastest"], "invalid choice"),
    (["plain_wsgi:app", "--kill-timeout", "soon"], "expected seconds"),
    (["plain_wsgi:app", "--keep-alive", "-1"], "expected 0 to 86400 seconds"),
    (["plain_wsgi:app", "--env", "NOEQUALS"], "invalid --env"),
    ([], "missing TARGET"),
])
def test_bad_input_is_one_line(args, expected):
    code, out, err = run_cli("run", *args, "--app-dir", APPS, cwd=APPS)
    assert_one_line_error(code, out, err, expected)
    assert not any(line.startswith("Traceback") for line in err), err


def test_import_error_in_the_app_is_shown_once_and_not_respawned():
    t0 = time.monotonic()
    code, out, err = run_cli("run", "broken_import:app", "-i", "2", "-b", f"127.0.0.1:{free_port()}",
                             "--app-dir", APPS)
    assert_one_line_error(code, out, err, "importing 'broken_import' failed",
                          "deliberate failure at import time")
    assert sum(line.startswith("Traceback") for line in err) == 1, err
    assert sum("raise RuntimeError" in line for line in err) == 1, err
    assert time.monotonic() - t0 < 20


def test_import_error_with_preload():
    code, out, err = run_cli("run", "broken_import:app", "--preload", "-b", f"127.0.0.1:{free_port()}",
                             "--app-dir", APPS)
    assert_one_line_error(code, out, err, "deliberate failure")
    assert sum(line.startswith("Traceback") for line in err) == 1, err


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_cli("run", "plain_wsgi:app", "-i", "2", "-b", f"127.0.0.1:{port}",
                                 "--app-dir", APPS)
    assert_one_line_error(code, out, err, f"127.0.0.1:{port}", "in use")
    assert not any(line.startswith("Traceback") for line in err), err


def test_instances_max_honours_affinity():
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset is not installed")
    port = free_port()
    with Cli("run", "plain_wsgi:app", "-i", "max", "-b", f"127.0.0.1:{port}", "--app-dir", APPS,
             prefix=(taskset, "-c", "0")) as cli:
        cli.wait_line("ready, 1 workers")
        assert any("pyclusterc: 1 worker " in line for line in cli.stdout), cli.stdout  # after the timestamp
        assert get(port)[0] == 200


def test_instances_values():
    assert config.resolve_instances("3", cpus=8) == 3
    assert config.resolve_instances("max", cpus=8) == 8
    assert config.resolve_instances("-2", cpus=8) == 6
    assert config.resolve_instances("-20", cpus=8) == 1  # never below one
    for bad in ("", "x", "1.5", "99999"):
        with pytest.raises(config.ConfigError):
            config.resolve_instances(bad, cpus=8)


def test_cgroup_parsers():
    assert cpus.cgroup_v2_limit("150000 100000\n") == 1.5
    assert cpus.cgroup_v2_limit("max 100000\n") is None
    assert cpus.cgroup_v1_limit("-1\n", "100000\n") is None
    assert cpus.cgroup_v1_limit("50000\n", "100000\n") == 0.5


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_cgroup_v2_hierarchy_takes_the_lowest_quota(tmp_path):
    root = tmp_path / "cgroup"
    _write(str(tmp_path / "self_cgroup"), "0::/app.slice/web.service\n")
    _write(str(root / "app.slice" / "web.service" / "cpu.max"), "max 100000\n")
    _write(str(root / "app.slice" / "cpu.max"), "250000 100000\n")
    assert cpus.cgroup_cpu_limit(str(root), str(tmp_path / "self_cgroup")) == 2.5
    affinity = len(os.sched_getaffinity(0))
    assert cpus.usable_cpus(str(root), str(tmp_path / "self_cgroup")) == min(affinity, 3)
    _write(str(root / "app.slice" / "web.service" / "cpu.max"), "50000 100000\n")
    assert cpus.usable_cpus(str(root), str(tmp_path / "self_cgroup")) == 1


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    _write(str(tmp_path / "self_cgroup"), "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    _write(str(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us"), "100000\n")
    _write(str(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us"), "100000\n")
    assert cpus.cgroup_cpu_limit(str(root), str(tmp_path / "self_cgroup")) == 1.0
    assert cpus.usable_cpus(str(root), str(tmp_path / "self_cgroup")) == 1
    # No controller files at all: no limit.
    assert cpus.cgroup_cpu_limit(str(tmp_path / "empty"), str(tmp_path / "self_cgroup")) is None


def test_settings_from_pyproject_and_flags_win(tmp_path):
    port = free_port()
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n\n[tool.pyclusterc]\n"
        f"instances = 1\nbind = '127.0.0.1:{port}'\napp-dir = '{APPS}'\n")
    with Cli("run", "plain_wsgi:app", cwd=str(tmp_path)) as cli:
        cli.wait_line("ready, 1 workers")
        assert get(port)[0] == 200
    with Cli("run", "plain_wsgi:app", "-i", "2", cwd=str(tmp_path)) as cli:
        cli.wait_line("ready, 2 workers")


def test_pyclusterc_toml_bad_setting_is_one_line(tmp_path):
    (tmp_path / "pyclusterc.toml").write_text("instances = 1\nworkerz = 3\n")
    code, out, err = run_cli("run", "plain_wsgi:app", cwd=str(tmp_path))
    assert_one_line_error(code, out, err, "unknown setting 'workerz'")


def test_worker_output_is_prefixed_and_env_is_set():
    port = free_port()
    with Cli("run", "echo_script.py", "-i", "2", "--env", f"ECHO_PORT={port}", cwd=APPS) as cli:
        cli.wait_line("[0] script worker 1 listening")  # the prefix is the stable index (0..N-1)
        cli.wait_line("[1] script worker 2 listening")
        assert get(port)[0] == 200


@pytest.mark.parametrize("target,extra,body", [("factory_app:create_wsgi('hi')", (), b"hi"),
                                               ("factory_app:create_asgi", ("--factory",), b"hello")],
                         ids=["called-in-target", "factory-flag"])
def test_app_factories_are_called_once_per_worker(target, extra, body):
    port = free_port()
    with Cli("run", target, "-i", 1, "-b", f"127.0.0.1:{port}", "--app-dir", APPS, "--backlog", "64",
             *extra) as cli:
        cli.wait_line("ready, 1 workers ready")
        assert get(port)[2] == body


def test_a_target_call_with_non_literal_arguments_is_one_line():
    code, out, err = run_cli("run", "factory_app:create_wsgi(os.environ)", cwd=APPS)
    assert_one_line_error(code, out, err, "call arguments must be literals")
