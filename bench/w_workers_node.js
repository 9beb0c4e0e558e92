// bench/w_workers_node.js: Node's worker_threads postMessage round trip
// (a small argument echoed back), sequential, as braid's rt_us.
const { Worker } = require('worker_threads');
const N = Number(process.argv[2] || 20000);
const w = new Worker("const { parentPort } = require('worker_threads');" +
  "parentPort.on('message', (m) => parentPort.postMessage(m));", { eval: true });
let i = 0, t0, c0;
w.on('message', (m) => {
  if (m !== i) throw new Error('bad echo');
  if (i === 0) { t0 = process.hrtime.bigint(); c0 = process.cpuUsage(); }
  if (++i > N) {
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0);
    console.log('rt_us', s / N * 1e6);
    console.log('rt_cpu_us', (c.user + c.system) / N);
    w.terminate();
    return;
  }
  w.postMessage(i);
});
w.postMessage(0);
