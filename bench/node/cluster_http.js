// Node 20 cluster peer for bench/bench_cluster.py: 2 workers answer raw HTTP with `net`.
//
//   NODE_CLUSTER_SCHED_POLICY=rr|none node cluster_http.js COUNTS_DIR [WORKERS]
//
// The primary prints {"event":"ready","port":P} once every worker listens (port 0:
// the cluster shares one ephemeral port). Each worker counts the requests it served
// and writes the count to COUNTS_DIR/<id> every 100 ms (the bench reads deltas).
'use strict';
const cluster = require('node:cluster');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const countsDir = process.argv[2];
const workers = Number(process.argv[3] || 2);
const RESPONSE = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
const CLOSE_RESPONSE = Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok');

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on('listening', (worker, address) => {
    if (++listening === workers) {
      console.log(JSON.stringify({ event: 'ready', port: address.port, policy: cluster.schedulingPolicy }));
    }
  });
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const file = path.join(countsDir, String(cluster.worker.id));
  let served = 0;
  let written = -1;
  const flush = () => {
    if (served !== written) {
      fs.writeFileSync(file, String(served));
      written = served;
    }
  };
  setInterval(flush, 100);
  flush();
  net.createServer((socket) => {
    socket.on('data', (data) => {
      // Requests end with a blank line; wrk never splits one across packets here.
      let requests = 0;
      for (let at = data.indexOf('\r\n\r\n'); at !== -1; at = data.indexOf('\r\n\r\n', at + 4)) requests++;
      if (requests === 0) return;
      served += requests;
      if (data.includes('Connection: close')) {
        socket.end(CLOSE_RESPONSE);
      } else {
        for (let i = 0; i < requests; i++) socket.write(RESPONSE);
      }
    });
    socket.on('error', () => {});
  }).listen(0, '127.0.0.1');
}
