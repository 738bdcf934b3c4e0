// Atomics.add on an Int32Array over a SharedArrayBuffer, ns per op (JIT-compiled),
// for context beside the Python figures. Usage: node add.js [ops] -> one JSON line.
'use strict';
const ops = Number(process.argv[2] || 20000000);
const ta = new Int32Array(new SharedArrayBuffer(16));
for (let i = 0; i < 1000000; i++) Atomics.add(ta, 0, 1); // warm up the JIT
const start = process.hrtime.bigint();
for (let i = 0; i < ops; i++) Atomics.add(ta, 0, 1);
const ns = Number(process.hrtime.bigint() - start);
console.log(JSON.stringify({ node: process.version, ops, ns_per_op: ns / ops, check: ta[0] }));
