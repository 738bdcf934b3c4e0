"""The process manager's jobs, one at a time: a rolling reload or restart (``Replace``)
and a change of the worker count (``Scale``). A job answers its caller (a control
client, a signal has none) once, when it is done or has failed.

    Replace: for each old worker, `batch` at a time:
        spawn a new one with the same index ──ready──► retire the old one (it drains)
                                            ──fails (exit, app error, no readiness in
                                              --listen-timeout)──► abort: the new ones
                                              are stopped, the old ones keep serving
    Scale:   spawn the missing indexes / retire the highest ones; done when the new
             ones are ready and the retired ones are gone.
"""

__all__ = ["Replace", "Scale"]


class Replace:
    def __init__(self, manager, what, batch, respond=None, choose=None):
        self.manager = manager
        self.what = what
        self.batch = batch
        self.respond = respond
        self.choose = choose or manager.serving_records
        self.pending = {}   # new worker id -> (old record, readiness timer)
        self.replaced = []
        self.error = None
        self.queue = []
        self.started = None

    def start(self):
        self.queue = list(self.choose())
        self.started = self.manager.clock()
        self.fill()

    def fill(self):
        manager = self.manager
        while self.queue and len(self.pending) < self.batch and not manager.stopping and self.error is None:
            old = self.queue.pop(0)
            if old.state != "serving":
                continue
            new = manager.spawn(old.index, lineage=old)
            if new is None:  # could not fork: say so, keep the old ones
                self.abort(f"cannot start a new worker for index {old.index}")
                break
            timer = manager.cluster.call_later(manager.settings.listen_timeout,
                                               lambda n=new: self.not_ready(n))
            self.pending[new.id] = (old, timer)
        if not self.pending:
            self.finish()

    def on_ready(self, record):
        entry = self.pending.pop(record.id, None)
        if entry is None:
            return False
        old, timer = entry
        timer.cancel()
        self.replaced.append((old.pid, record.pid))
        self.manager.retire(old)
        self.fill()
        return True

    def not_ready(self, record):
        if record.id not in self.pending:
            return
        self.manager.say(f"worker {record.index} (pid {record.pid}) not ready within --listen-timeout "
                         f"{self.manager.settings.listen_timeout:g} s")
        self.failed(record, f"new worker {record.index} was not ready within --listen-timeout "
                            f"{self.manager.settings.listen_timeout:g} s")

    def on_app_error(self, record, message):
        if record.id not in self.pending:
            return False
        self.failed(record, f"new worker {record.index} could not start the app: {message}")
        return True

    def on_exit(self, record, how):
        if record.id not in self.pending:
            return False
        self.failed(record, f"new worker {record.index} died before it was ready ({how})")
        return True

    def failed(self, record, reason):
        entry = self.pending.pop(record.id, None)
        if entry is not None:
            entry[1].cancel()
        self.manager.discard(record)
        self.abort(reason)

    def abort(self, reason):
        """Stop here: the new workers not yet ready go, the old ones keep serving."""
        if self.error is None:
            self.error = f"{self.what} failed: {reason}; the old workers keep serving"
            self.manager.say(self.error)
        self.queue = []
        for new_id, (_, timer) in list(self.pending.items()):
            timer.cancel()
            record = self.manager.records.get(new_id)
            if record is not None:
                self.manager.discard(record)
        self.pending.clear()
        self.finish()

    def cancel(self):
        for _, timer in self.pending.values():
            timer.cancel()
        if self.respond is not None:
            self.respond({"ok": False, "error": f"{self.what} stopped: the cluster is stopping"})
            self.respond = None

    def finish(self):
        manager = self.manager
        if self.error is None and self.replaced:
            manager.reloads += 1
            message = (f"{self.what}: replaced {len(self.replaced)} worker(s) in "
                       f"{manager.clock() - self.started:.1f} s")
            manager.say(message)
        else:
            message = self.error or f"{self.what}: no worker to replace"
        if self.respond is not None:
            self.respond({"ok": self.error is None, "message": message, "error": self.error,
                          "replaced": self.replaced})
            self.respond = None
        manager.job_done(self)


class Scale:
    def __init__(self, manager, count, respond=None):
        self.manager = manager
        self.count = count
        self.respond = respond
        self.waiting = set()
        self.before = 0

    def start(self):
        manager = self.manager
        serving = manager.serving_records()
        manager.wanted = self.count
        self.before = len(serving)
        free = manager.free_indexes()
        for index in free[:max(0, self.count - len(serving))]:
            new = manager.spawn(index)
            if new is not None:
                self.waiting.add(new.id)
                manager.cluster.call_later(manager.settings.listen_timeout, lambda n=new: self.done_with(n))
        for old in sorted(serving, key=lambda r: r.index, reverse=True)[:max(0, len(serving) - self.count)]:
            self.waiting.add(old.id)
            manager.retire(old)
        if not self.waiting:
            self.finish()

    def on_ready(self, record):
        self.done_with(record)
        return False

    def on_app_error(self, record, message):
        return False

    def on_exit(self, record, how):
        self.done_with(record)
        return False  # exits still get the usual handling (a crash is restarted)

    def done_with(self, record):
        if record.id in self.waiting:
            self.waiting.discard(record.id)
            if not self.waiting:
                self.finish()

    def cancel(self):
        if self.respond is not None:
            self.respond({"ok": False, "error": "scale stopped: the cluster is stopping"})
            self.respond = None

    def finish(self):
        message = f"scaled from {self.before} to {self.count} worker(s)"
        self.manager.say(message)
        if self.respond is not None:
            self.respond({"ok": True, "message": message})
            self.respond = None
        self.manager.job_done(self)
