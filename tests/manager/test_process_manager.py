"""ProcessManager driven with a fake cluster and a fake clock, as gunicorn's
tests/test_arbiter.py drives its Arbiter: no process is started; each test plays the
events (ready, exit, app error, timers) and checks what the manager did."""
import errno

import pytest

from pyclusterc.manager import ProcessManager, RunSettings
from pyclusterc.manager.worker import APP_LOAD_ERROR, WORKER_INDEX_ENV

pytestmark = pytest.mark.timeout(20)


class FakeHandle:
    def __init__(self, cluster, worker_id, env):
        self.cluster = cluster
        self.id = worker_id
        self.pid = 1000 + worker_id
        self.env = env
        self.index = int(env[WORKER_INDEX_ENV])
        self.fed = False
        self.disconnected = False
        self.killed = None
        self.dead = False
        self.requests = 0
        self.heartbeat = 0

    def start_feeding(self):
        self.fed = True

    def disconnect(self):
        self.disconnected = True
        self.fed = False

    def kill(self, sig="SIGTERM"):
        self.killed = sig

    def is_dead(self):
        return self.dead

    def score(self):
        return {"requests": self.requests, "inflight": 0, "connections": 0}

    def heartbeat_ns(self):
        return self.heartbeat


class FakeCluster:
    """The parts of pyclusterc.cluster a ProcessManager uses; time moves by advance()."""

    def __init__(self):
        self.now = 100.0
        self.handlers = {}
        self.timers = []
        self.workers = {}
        self.next_id = 1
        self.fork_error = None
        self.shutdown_timeout = None
        self.watched = {}

    def clock(self):
        return self.now

    def on(self, event, callback):
        self.handlers.setdefault(event, []).append(callback)

    def emit(self, event, *args):
        for callback in self.handlers.get(event, []):
            callback(*args)

    def setup_primary(self, **settings):
        self.primary_settings = settings

    def fork(self, env):
        if self.fork_error is not None:
            raise self.fork_error
        handle = FakeHandle(self, self.next_id, env)
        self.next_id += 1
        self.workers[handle.id] = handle
        return handle

    def call_later(self, delay, callback, keep_alive=False):
        timer = type("T", (), {})()
        timer.when, timer.callback, timer.cancelled = self.now + delay, callback, False
        timer.cancel = lambda: setattr(timer, "cancelled", True)
        self.timers.append(timer)
        return timer

    def watch_fd(self, fd, callback):
        self.watched[fd] = callback
        return fd

    def unwatch_fd(self, token):
        self.watched.pop(token, None)

    def advance(self, seconds):
        self.now += seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= self.now]
            if not due:
                return
            for timer in due:
                self.timers.remove(timer)
                timer.callback()

    def shutdown(self, timeout=None):
        self.shutdown_timeout = timeout
        for handle in self.workers.values():
            handle.disconnect()

    # events as the real cluster emits them
    def ready(self, handle):
        self.emit("ready", handle, "server")

    def exit(self, handle, code=0, sig=None):
        handle.dead = True
        self.workers.pop(handle.id, None)
        self.emit("exit", handle, code, sig)

    def live(self):
        return [h for h in self.workers.values() if not h.dead]


def manager_with(instances=2, **settings):
    cluster = FakeCluster()
    values = {"target": "app:app", "instances": instances, "interface": "asgi",
              "addresses": ("127.0.0.1:8000",), "name": "t", **settings}
    said = []
    manager = ProcessManager(RunSettings(**values), cluster=cluster, clock=cluster.clock,
                             say=lambda text, error=False: said.append(text), control=False)
    manager.watch_signals = lambda: None  # no real signal handlers in the test process
    manager.start()
    return manager, cluster, said


def ready_all(cluster):
    for handle in list(cluster.live()):
        if not handle.fed and not handle.disconnected:
            cluster.ready(handle)


def test_workers_get_stable_indexes_and_no_connection_before_their_app_started():
    manager, cluster, said = manager_with(instances=3)
    handles = cluster.live()
    assert sorted(h.index for h in handles) == [0, 1, 2]
    assert cluster.primary_settings["feed_after_ready"] is True
    assert not any(h.fed for h in handles)
    assert not any("ready" in line for line in said)
    cluster.ready(handles[0])
    assert handles[0].fed and not any(line.startswith("ready") for line in said)
    ready_all(cluster)
    assert [line for line in said if line.startswith("ready")] == ["ready, 3 workers ready"]
    assert {w["state"] for w in manager.status()["workers"]} == {"serving"}


def test_wait_ready_needs_the_apps_own_ready_call_too():
    manager, cluster, _ = manager_with(instances=1, wait_ready=True)
    (handle,) = cluster.live()
    cluster.ready(handle)
    assert not handle.fed
    cluster.emit("ready", handle, "app")
    assert handle.fed


def test_a_crashed_worker_is_replaced_with_the_same_index():
    manager, cluster, said = manager_with(instances=2)
    ready_all(cluster)
    cluster.advance(5)
    victim = next(h for h in cluster.live() if h.index == 1)
    cluster.exit(victim, code=None, sig="SIGKILL")
    replacement = [h for h in cluster.live() if h.index == 1]
    assert len(replacement) == 1 and replacement[0] is not victim
    assert manager.restarts == 1
    assert any("died (signal SIGKILL)" in line for line in said)


def test_rolling_reload_replaces_one_at_a_time_after_each_successor_is_ready():
    manager, cluster, said = manager_with(instances=2)
    ready_all(cluster)
    old = {h.index: h for h in cluster.live()}
    replies = []
    manager.reload(replies.append)
    new0 = [h for h in cluster.live() if h not in old.values()]
    assert [h.index for h in new0] == [0]       # one at a time
    assert not old[0].disconnected              # the old one serves until its successor is ready
    cluster.ready(new0[0])
    assert old[0].disconnected and not old[1].disconnected
    new1 = [h for h in cluster.live() if h not in old.values() and h is not new0[0]]
    assert [h.index for h in new1] == [1]
    cluster.ready(new1[0])
    assert old[1].disconnected
    assert replies and replies[0]["ok"] and manager.reloads == 1
    for handle in old.values():
        cluster.exit(handle, 0)
    assert sorted(w["id"] for w in manager.status()["workers"]) == [0, 1]


def test_a_reload_whose_new_worker_dies_keeps_the_old_ones():
    manager, cluster, said = manager_with(instances=2)
    ready_all(cluster)
    old = list(cluster.live())
    replies = []
    manager.reload(replies.append)
    (new,) = [h for h in cluster.live() if h not in old]
    cluster.exit(new, code=3)
    assert replies[0]["ok"] is False and "died before it was ready" in replies[0]["error"]
    assert not any(h.disconnected for h in old)
    assert len(cluster.live()) == 2 and all(h in old for h in cluster.live())
    assert not manager.stopping


def test_a_reload_to_an_app_that_fails_to_start_reports_the_apps_error():
    manager, cluster, said = manager_with(instances=1)
    ready_all(cluster)
    (old,) = cluster.live()
    replies = []
    manager.reload(replies.append)
    (new,) = [h for h in cluster.live() if h is not old]
    cluster.emit("message", new, {"pyclusterc": "app_error", "message": "lifespan startup failed"})
    assert replies[0]["ok"] is False and "lifespan startup failed" in replies[0]["error"]
    assert new.killed == "SIGKILL"
    cluster.exit(new, APP_LOAD_ERROR)
    assert not old.disconnected and not manager.stopping and manager.app_error is None


def test_a_reload_whose_new_worker_never_gets_ready_aborts_at_the_listen_timeout():
    manager, cluster, said = manager_with(instances=1, listen_timeout=2.0)
    ready_all(cluster)
    (old,) = cluster.live()
    replies = []
    manager.reload(replies.append)
    cluster.advance(1.9)
    assert not replies
    cluster.advance(0.2)
    assert replies[0]["ok"] is False and "--listen-timeout" in replies[0]["error"]
    assert not old.disconnected


def test_an_app_that_cannot_load_at_start_stops_the_cluster_with_its_error():
    manager, cluster, said = manager_with(instances=2)
    first = cluster.live()[0]
    cluster.emit("message", first, {"pyclusterc": "app_error", "message": "no module named 'x'"})
    assert manager.stopping and manager.app_error[0] == "no module named 'x'"
    assert cluster.shutdown_timeout == manager.settings.kill_timeout


def test_a_fork_that_fails_is_retried_not_raised():
    manager, cluster, said = manager_with(instances=1)
    ready_all(cluster)
    (handle,) = cluster.live()
    cluster.fork_error = OSError(errno.EMFILE, "Too many open files")
    cluster.exit(handle, code=1)          # the crash's respawn cannot fork
    assert cluster.live() == [] and any("cannot start worker 0" in line for line in said)
    cluster.advance(0.1)                  # still failing: tried again later, never raised
    cluster.fork_error = None
    cluster.advance(10)
    assert [h.index for h in cluster.live()] == [0]


def test_crashing_in_a_loop_stops_after_max_restarts():
    manager, cluster, said = manager_with(instances=1, max_restarts=2, min_uptime=1.0)
    for _ in range(3):
        (handle,) = cluster.live()
        cluster.exit(handle, code=1)
    assert manager.stopping and "keeps crashing" in manager.app_error[0]


def test_a_stop_during_a_reload_answers_the_reload_and_stops():
    manager, cluster, said = manager_with(instances=2)
    ready_all(cluster)
    replies = []
    manager.reload(replies.append)
    manager.stop()
    assert replies[0]["ok"] is False and "stopping" in replies[0]["error"]
    assert manager.stopping and manager.app_error is None
    assert all(h.disconnected for h in cluster.live())


def test_scale_keeps_indexes_dense():
    manager, cluster, said = manager_with(instances=2)
    ready_all(cluster)
    manager.scale(4)
    assert sorted(h.index for h in cluster.live()) == [0, 1, 2, 3]
    ready_all(cluster)
    manager.scale(1)
    retired = [h for h in cluster.live() if h.disconnected]
    assert sorted(h.index for h in retired) == [1, 2, 3]
    with pytest.raises(ValueError):
        manager.scale(0)


def test_limits_replace_a_worker_past_max_requests_gracefully():
    manager, cluster, said = manager_with(instances=1, max_requests=10)
    ready_all(cluster)
    (handle,) = cluster.live()
    handle.requests = 11
    cluster.advance(1.0)
    (new,) = [h for h in cluster.live() if h is not handle]
    assert new.index == 0 and not handle.disconnected
    cluster.ready(new)
    assert handle.disconnected


def test_signals_have_defined_actions_and_none_raises():
    manager, cluster, said = manager_with(instances=1)
    ready_all(cluster)
    for name in ("SIGUSR1", "SIGUSR2", "SIGWINCH"):
        manager.on_signal(name)
    assert not manager.stopping
    manager.on_signal("SIGTERM")
    assert manager.stopping
