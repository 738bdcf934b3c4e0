// Node worker_threads peers of bench/bench_workers.py: one-way postMessage throughput
// (worker -> main), round trip main <-> worker, and new Worker() to first message.
// Usage: node workers_messages.js N_MESSAGES N_ROUND_TRIPS  -> one JSON line on stdout.
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');

if (isMainThread) {
  const n = Number(process.argv[2] || 100000);
  const trips = Number(process.argv[3] || 5000);
  const out = { node: process.version };
  const run = (mode, payload) => new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const w = new Worker(__filename, { workerData: { mode, n, payload } });
    let got = 0, first = null, start = null;
    w.on('message', (m) => {
      if (first === null) { first = Number(process.hrtime.bigint() - t0) / 1e6; }
      if (mode === 'start') { w.terminate(); resolve(first); return; }
      if (mode === 'rt') {
        if (m === 'ready') { start = process.hrtime.bigint(); w.postMessage(0); return; }
        if (++got === trips) { const us = Number(process.hrtime.bigint() - start) / 1e3 / trips; w.terminate(); resolve(us); return; }
        w.postMessage(got); return;
      }
      if (m === 'ready') { start = process.hrtime.bigint(); return; }
      if (++got === n) { const s = Number(process.hrtime.bigint() - start) / 1e9; w.terminate(); resolve(n / s); }
    });
  });
  (async () => {
    out.start_ms = await run('start');
    out.one_way_tuple_per_s = await run('oneway', 'tuple');
    out.one_way_1k_per_s = await run('oneway', '1k');
    out.round_trip_us = await run('rt');
    console.log(JSON.stringify(out));
  })();
} else {
  const { mode, n, payload } = workerData;
  if (mode === 'start') parentPort.postMessage('hi');
  else if (mode === 'rt') { parentPort.on('message', (m) => parentPort.postMessage(m)); parentPort.postMessage('ready'); }
  else {
    const msg = payload === 'tuple' ? [1, 2, 3] : new Uint8Array(1024);
    parentPort.postMessage('ready');
    // Start after the main thread has seen 'ready' (same tick ordering is kept anyway).
    for (let i = 0; i < n; i++) parentPort.postMessage(msg);
  }
}
