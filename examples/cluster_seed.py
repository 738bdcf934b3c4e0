"""Node's cluster seed pattern in Python: one worker per CPU sharing port 3000.

    python examples/cluster_seed.py        then: curl http://127.0.0.1:3000/
"""
import os

from pyclusterc import cluster

if cluster.is_primary:
    print(f"primary {os.getpid()} is running")
    for _ in range(len(os.sched_getaffinity(0))):
        cluster.fork()
    cluster.on("exit", lambda worker, code, sig: print(f"worker {worker.pid} died ({sig or code})"))
    cluster.run()
else:
    listener = cluster.listen(("127.0.0.1", 3000))
    print(f"worker {os.getpid()} started")
    body = f"hello from worker {cluster.worker.id}\n".encode()
    for conn, _ in listener:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
