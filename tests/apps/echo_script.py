"""A script target: each worker listens itself (port from ECHO_PORT) and answers its id."""
import os

from pyclusterc import cluster

listener = cluster.listen(("127.0.0.1", int(os.environ["ECHO_PORT"])))
print("script worker", cluster.worker.id, "listening", flush=True)
for conn, _ in listener:
    with conn:
        conn.recv(4096)
        body = b"script %d" % cluster.worker.id
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
