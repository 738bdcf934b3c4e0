"""A hit counter shared by every worker of a cluster, kept with Atomics.

The primary makes one Int32Array and sends it to each worker; it arrives as the
same memory (its fd travels with the message), so every worker adds to one cell.

    python examples/hit_counter.py        then: curl http://127.0.0.1:3000/
"""
import os
import threading

from pyclusterc import Int32Array, cluster

if cluster.is_primary:
    hits = Int32Array(1)
    for _ in range(len(os.sched_getaffinity(0))):
        worker = cluster.fork()
        worker.on("online", lambda w=worker: w.send({"hits": hits}))
    cluster.run()
else:
    got_counter = threading.Event()
    shared = {}

    def on_message(message):
        shared.update(message)
        got_counter.set()

    cluster.worker.on("message", on_message)
    listener = cluster.listen(("127.0.0.1", 3000))
    got_counter.wait()
    hits = shared["hits"]
    for conn, _ in listener:
        with conn:
            conn.recv(65536)
            n = hits.add(0, 1) + 1
            body = f"hit {n} (worker {cluster.worker.id})\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
