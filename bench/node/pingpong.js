// Ping-pong with Atomics.wait / Atomics.notify between two Node worker threads, the
// peer of bench/bench_atomics.py's process ping-pong. Same protocol: the "ping"
// worker sets the cell to 1 and notifies, the "pong" worker sets it back to 0 and
// notifies. Usage: node pingpong.js [round_trips]   -> one JSON line on stdout.
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');

// cell[0]: the ping cell; cell[1]: 1 once the pong worker is in its loop.
if (isMainThread) {
  const roundTrips = Number(process.argv[2] || 20000);
  const sab = new SharedArrayBuffer(8);
  const start = (role) => {
    const worker = new Worker(__filename, { workerData: { sab, roundTrips, role } });
    worker.on('error', (e) => { console.error(e); process.exit(1); });
    return worker;
  };
  start('pong');
  start('ping').on('message', (ns) => {
    console.log(JSON.stringify({ node: process.version, round_trips: roundTrips,
                                 us_per_round_trip: ns / roundTrips / 1000 }));
  });
} else {
  const cell = new Int32Array(workerData.sab);
  const { roundTrips, role } = workerData;
  if (role === 'pong') {
    Atomics.store(cell, 1, 1);
    Atomics.notify(cell, 1);
    for (let i = 0; i < roundTrips; i++) {
      while (Atomics.load(cell, 0) === 0) Atomics.wait(cell, 0, 0);
      Atomics.store(cell, 0, 0);
      Atomics.notify(cell, 0, 1);
    }
  } else {
    // Start the clock once the pong worker runs its loop, so start-up is not timed.
    while (Atomics.load(cell, 1) === 0) Atomics.wait(cell, 1, 0);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < roundTrips; i++) {
      Atomics.store(cell, 0, 1);
      Atomics.notify(cell, 0, 1);
      while (Atomics.load(cell, 0) === 1) Atomics.wait(cell, 0, 1);
    }
    parentPort.postMessage(Number(process.hrtime.bigint() - t0));
  }
}
