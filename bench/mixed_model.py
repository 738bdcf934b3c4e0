#!/usr/bin/env python3
"""A model, not a measurement: how low can the mixed load's fast p99 go with one event
loop per worker, whatever the dispatch?

bench_serve.py's mixed load: closed-loop clients, a new connection per request, every
10th request blocks its worker's loop 20 ms. This discrete-event model runs that load on
single-loop workers under two dispatchers:

- per-worker: each request joins the queue of the worker with the fewest requests
  (queued + running) and waits there (uvicorn's workers, or `least` by counts);
- oracle: a request goes to a free worker, else waits in one central queue for the
  first worker to become free (the best any dispatcher can do without preemption).

    python bench/mixed_model.py                       # 2 workers, 4 clients
    python bench/mixed_model.py --workers 8           # e.g. 2 workers x 4 loops
"""
import argparse
import heapq
import random


def simulate(oracle, workers, clients, fast_s, slow_s, think_s, seconds, seed):
    rng = random.Random(seed)
    events = []   # (time, order, kind, payload)
    order = 0
    running = [None] * workers          # the request each worker runs, or None
    queues = [[] for _ in range(workers)]
    central = []
    sent = [0] * clients
    latencies = {"fast": [], "slow": []}

    def push(at, kind, payload):
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, payload))

    def send(client, now):
        sent[client] += 1
        service = slow_s if sent[client] % 10 == 0 else fast_s
        push(now, "arrive", (client, service, now))

    def start(worker, request, now):
        running[worker] = request
        push(now + request[1], "done", worker)

    for client in range(clients):
        sent[client] = client  # stagger which request of each client blocks
        send(client, rng.random() * 0.001)
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "arrive":
            if oracle:
                free = [w for w in range(workers) if running[w] is None]
                if free:
                    start(free[0], payload, now)
                else:
                    central.append(payload)
            else:
                worker = min(range(workers), key=lambda w: len(queues[w]) + (running[w] is not None))
                if running[worker] is None:
                    start(worker, payload, now)
                else:
                    queues[worker].append(payload)
        else:
            worker = payload
            client, service, arrived = running[worker]
            latencies["slow" if service == slow_s else "fast"].append(now - arrived)
            running[worker] = None
            send(client, now + think_s)
            waiting = central if oracle else queues[worker]
            if waiting:
                start(worker, waiting.pop(0), now)
    fast = sorted(latencies["fast"])
    return {"fast_p50_ms": round(fast[len(fast) // 2] * 1000, 2),
            "fast_p99_ms": round(fast[int(len(fast) * 0.99)] * 1000, 2),
            "requests_per_s": round((len(fast) + len(latencies["slow"])) / seconds)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="event loops in all (default 2)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--fast-ms", type=float, default=0.4, help="service time of a fast request")
    parser.add_argument("--think-ms", type=float, default=1.2, help="client time between requests")
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    for name, oracle in (("per-worker queues", False), ("oracle, central queue", True)):
        figures = [simulate(oracle, args.workers, args.clients, args.fast_ms / 1000, 0.020,
                            args.think_ms / 1000, args.seconds, seed) for seed in (1, 2, 3)]
        print(f"{name:>22}: fast p99 ms {[f['fast_p99_ms'] for f in figures]}, "
              f"p50 ms {[f['fast_p50_ms'] for f in figures]}, req/s {[f['requests_per_s'] for f in figures]}")


if __name__ == "__main__":
    main()
