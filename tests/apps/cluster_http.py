"""A cluster used by tests/test_cluster.py: N workers answer raw HTTP with their id.

    python cluster_http.py WORKERS POLICY [--block-first] [--port P]

The primary prints one JSON line per cluster event (the tests read them); once every
worker listens it prints {"event": "ready", "port": P, "pids": [...]}.
With --block-first, worker 1 never accepts (its connections stay queued), so a
test can SIGKILL it and check that another worker answers them.
"""
import json
import sys

from pyclusterc import cluster


def say(**fields):
    print(json.dumps(fields) + "\n", end="", flush=True)  # one write (PYTHONUNBUFFERED)


def serve_worker():
    block = "--block-first" in sys.argv and cluster.worker.id == 1
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
    # Before listen(): the primary may message us as soon as we listen.
    cluster.worker.on("message", lambda msg: cluster.worker.send({"echo": msg}))
    try:
        listener = cluster.listen(("127.0.0.1", port))
    except OSError as e:
        cluster.worker.send({"listen_error": e.errno, "text": str(e)})
        sys.exit(3)
    if block:
        import time
        while True:
            time.sleep(1)
    body = str(cluster.worker.id).encode()
    for conn, _ in listener:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))


def main():
    count, policy = int(sys.argv[1]), sys.argv[2]
    cluster.scheduling_policy = policy
    listening = {}

    def on_listening(worker, address):
        listening[worker.id] = address
        say(event="listening", id=worker.id, port=address[1])
        if len(listening) == count:
            say(event="ready", port=address[1],
                pids={w.id: w.pid for w in cluster.workers.values()})

    cluster.on("fork", lambda w: say(event="fork", id=w.id))
    cluster.on("online", lambda w: say(event="online", id=w.id))
    cluster.on("listening", on_listening)
    cluster.on("message", lambda w, m: say(event="message", id=w.id, message=m))
    cluster.on("disconnect", lambda w: say(event="disconnect", id=w.id))
    cluster.on("exit", lambda w, code, sig: say(event="exit", id=w.id, code=code, signal=sig,
                                                 after_disconnect=w.exited_after_disconnect))
    for _ in range(count):
        cluster.fork()

    import signal
    signal.signal(signal.SIGTERM, lambda *a: cluster.shutdown(timeout=5))
    signal.signal(signal.SIGUSR1, lambda *a: [w.send({"n": w.id}) for w in cluster.workers.values()])
    signal.signal(signal.SIGUSR2, lambda *a: cluster.workers[1].disconnect())
    cluster.run()
    say(event="done")


if cluster.is_primary:
    main()
else:
    serve_worker()
