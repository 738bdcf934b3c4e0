// Cross-thread ping-pong with Atomics.wait / Atomics.notify (Node worker_threads),
// the peer of bench/bench_atomics.py's process ping-pong. Same protocol: the main
// thread sets the cell to 1 and notifies, the worker sets it back to 0 and notifies.
// Usage: node pingpong.js [round_trips]   -> one JSON line on stdout.
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');

if (isMainThread) {
  const roundTrips = Number(process.argv[2] || 20000);
  const cell = new Int32Array(new SharedArrayBuffer(8)); // [0] ping cell, [1] worker ready
  const worker = new Worker(__filename, { workerData: { sab: cell.buffer, roundTrips } });
  worker.on('error', (e) => { console.error(e); process.exit(1); });
  // Wait until the worker is running its loop, so its start-up is not timed.
  while (Atomics.load(cell, 1) === 0) Atomics.wait(cell, 1, 0, 10);
  const start = process.hrtime.bigint();
  for (let i = 0; i < roundTrips; i++) {
    Atomics.store(cell, 0, 1);
    Atomics.notify(cell, 0, 1);
    while (Atomics.load(cell, 0) === 1) Atomics.wait(cell, 0, 1);
  }
  const ns = Number(process.hrtime.bigint() - start);
  worker.terminate().then(() => {
    console.log(JSON.stringify({ node: process.version, round_trips: roundTrips,
                                 us_per_round_trip: ns / roundTrips / 1000 }));
  });
} else {
  const cell = new Int32Array(workerData.sab);
  Atomics.store(cell, 1, 1);
  Atomics.notify(cell, 1);
  for (let i = 0; i < workerData.roundTrips; i++) {
    while (Atomics.load(cell, 0) === 0) Atomics.wait(cell, 0, 0);
    Atomics.store(cell, 0, 0);
    Atomics.notify(cell, 0, 1);
  }
  parentPort.postMessage('done');
}
