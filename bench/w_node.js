// Node's side of W1..W6 (async functions + Promise.all; W4 a hand-written
// channel; W5 the net module; W6 child_process.spawn).
// usage: node --expose-gc bench/w_node.js W1|W2|W3|W4|W5|W6 [n] [rounds]
//   (W5: n = round trips per client; W6: n = processes)
// Prints RESULT lines; exits non-zero if the work was not all done.
'use strict';
const { performance } = require('node:perf_hooks');
const assert = require('node:assert');
const net = require('node:net');
const { spawn } = require('node:child_process');

const [which, nArg, roundsArg] = process.argv.slice(2);
const gc = globalThis.gc || (() => {});

function median(xs) {
  xs.sort((a, b) => a - b);
  const m = xs.length >> 1;
  return xs.length % 2 ? xs[m] : (xs[m - 1] + xs[m]) / 2;
}

function result(w, key, v) {
  console.log(`RESULT ${w} node ${key}=${v.toFixed(3)}`);
}

// W1: spawn n no-op tasks (async calls), then await all n. ns per task.
async function w1(n) {
  let done = 0;
  async function noop() { done++; }
  const t0 = performance.now();
  const ps = new Array(n);
  for (let i = 0; i < n; i++) ps[i] = noop();
  await Promise.all(ps);
  const dt = performance.now() - t0;
  assert.strictEqual(done, n, `W1 node: only ${done} of ${n} tasks ran`);
  return dt * 1e6 / n;
}

// A sleep that a scope can cancel: registers its canceller in `cancels`.
function sleep(ms, cancels) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    if (cancels) cancels.push((why) => { clearTimeout(t); reject(why); });
  });
}

// W2: n tasks each sleeping 50 ms concurrently. Wall ms.
async function w2(n) {
  let done = 0;
  async function sleeper() { await sleep(50); done++; }
  const t0 = performance.now();
  const ps = new Array(n);
  for (let i = 0; i < n; i++) ps[i] = sleeper();
  await Promise.all(ps);
  const ms = performance.now() - t0;
  assert.strictEqual(done, n, `W2 node: only ${done} of ${n} tasks woke`);
  assert(ms >= 49, `W2 node: 50 ms sleeps finished after ${ms} ms`);
  return ms;
}

// Fail-fast gather, written by hand (Node has no task groups): on the first
// rejection cancel every sibling, wait for their cleanup, then throw.
async function gather(fns) {
  const cancels = [];
  const ps = fns.map((fn) => fn(cancels));
  try {
    return await Promise.all(ps);
  } catch (e) {
    const cancelled = new Error('cancelled');
    for (const c of cancels) c(cancelled);
    await Promise.allSettled(ps);
    throw e;
  }
}

// W3: n siblings sleeping 10 s with a finally, one raising after 10 ms.
// ms from the raise until the gather has raised.
async function w3(n) {
  let closed = 0;
  let tRaise;
  const boom = new Error('boom');
  const fns = [];
  for (let i = 0; i < n; i++) {
    fns.push(async (cancels) => {
      try {
        await sleep(10000, cancels);
        throw new Error('W3 node: a sibling slept its full 10 s');
      } finally {
        closed++;
      }
    });
  }
  fns.push(async (cancels) => {
    await sleep(10, cancels);
    tRaise = performance.now();
    throw boom;
  });
  const t0 = performance.now();
  let err;
  try { await gather(fns); } catch (e) { err = e; }
  const t1 = performance.now();
  assert.strictEqual(err, boom, 'W3 node: gather did not raise the raiser\'s error');
  assert.strictEqual(closed, n, `W3 node: only ${closed} of ${n} cleanups ran`);
  assert(t1 - t0 < 5000, 'W3 node: the gather waited for the sleepers');
  return t1 - tRaise;
}

// A bounded async channel written by hand (Node has none). A value goes
// straight to a waiting receiver, else into the buffer (at most `cap`), else the
// sender waits; a promise is made only when a side has to wait, so a send or
// recv that can complete at once costs no allocation beyond the await itself.
// Waiters are served in FIFO order.
class Channel {
  constructor(cap) { this.cap = cap; this.buf = []; this.senders = []; this.receivers = []; }
  send(v) {
    if (this.receivers.length) { this.receivers.shift()(v); return undefined; }
    if (this.buf.length < this.cap) { this.buf.push(v); return undefined; }
    return new Promise((resolve) => this.senders.push([v, resolve]));
  }
  recv() {
    if (this.buf.length) {
      const v = this.buf.shift();
      if (this.senders.length) { const [sv, resolve] = this.senders.shift(); this.buf.push(sv); resolve(); }
      return v;
    }
    if (this.senders.length) { const [sv, resolve] = this.senders.shift(); resolve(); return sv; }
    return new Promise((resolve) => this.receivers.push(resolve));
  }
}

// W4: two tasks ping-pong over two channels of capacity 1; n messages
// (n/2 round trips). ns per message.
async function w4(n) {
  const trips = Math.floor(n / 2);
  const ping = new Channel(1), pong = new Channel(1);
  let got = 0, echoed = 0;
  async function pinger() {
    for (let i = 1; i <= trips; i++) {
      await ping.send(i);
      const v = await pong.recv();
      if (v !== i) throw new Error(`W4 node: round trip ${i} came back as ${v}`);
      got++;
    }
  }
  async function ponger() {
    let sum = 0;
    for (let k = 0; k < trips; k++) {
      const v = await ping.recv();
      sum += v;
      await pong.send(v);
    }
    echoed = sum;
  }
  const t0 = performance.now();
  await Promise.all([pinger(), ponger()]);
  const dt = performance.now() - t0;
  assert(got === trips && echoed === trips * (trips + 1) / 2,
    `W4 node: not every message was delivered (${got} of ${trips} round trips)`);
  return dt * 1e6 / (2 * trips);
}

const CLIENTS = 50;

// W5: TCP echo on 127.0.0.1 with the net module: a server and 50 clients in
// this process, each client doing `trips` sequential 64-byte round trips
// (write, collect 'data' until 64 bytes are back, compare, next). Both sides
// setNoDelay(true). Wall s from the first connect until every client is done.
async function w5(trips) {
  let total = 0;
  const server = net.createServer((sock) => {
    sock.setNoDelay(true);
    sock.on('data', (d) => sock.write(d));
    sock.on('end', () => sock.end());
    sock.on('error', (e) => { throw e; });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  function client(c) {
    const msgs = [];
    for (let k = 0; k < 16; k++) {
      msgs.push(Buffer.from(`client ${String(c).padStart(2, '0')} message ${String(k).padStart(2, '0')} `.repeat(4).slice(0, 64)));
    }
    return new Promise((resolve, reject) => {
      const rbuf = Buffer.alloc(128);
      let got = 0, i = 0;
      const sock = net.connect(port, '127.0.0.1', () => {
        sock.setNoDelay(true);
        sock.write(msgs[0]);
      });
      sock.on('error', reject);
      sock.on('data', (d) => {
        if (got + d.length > 64) return reject(new Error('W5 node: more bytes came back than were sent'));
        d.copy(rbuf, got);
        got += d.length;
        if (got < 64) return;
        got = 0;
        if (!rbuf.subarray(0, 64).equals(msgs[i % 16])) return reject(new Error(`W5 node: round trip ${i} came back wrong`));
        total++;
        if (++i < trips) sock.write(msgs[i % 16]);
        else { sock.end(); resolve(); }
      });
    });
  }
  const t0 = performance.now();
  const ps = [];
  for (let c = 1; c <= CLIENTS; c++) ps.push(client(c));
  await Promise.all(ps);
  const dt = (performance.now() - t0) / 1e3;
  await new Promise((resolve) => server.close(resolve));
  assert.strictEqual(total, CLIENTS * trips, `W5 node: only ${total} of ${CLIENTS * trips} round trips`);
  return dt;
}

// W6: run /bin/true n times with child_process.spawn (stdio 'ignore'), at most
// 8 in flight; each exit code must be 0. ms per process.
async function w6(n) {
  let started = 0, ok = 0;
  const t0 = performance.now();
  await new Promise((resolve, reject) => {
    let finished = 0;
    function next() {
      if (started >= n) return;
      started++;
      const p = spawn('/bin/true', [], { stdio: 'ignore' });
      p.on('error', reject);
      p.on('exit', (code, sig) => {
        if (code !== 0) return reject(new Error(`W6 node: /bin/true exited ${code} (${sig})`));
        ok++;
        if (++finished === n) resolve(); else next();
      });
    }
    for (let k = 0; k < 8; k++) next();
  });
  const dt = performance.now() - t0;
  assert.strictEqual(ok, n, `W6 node: only ${ok} of ${n} processes exited 0`);
  return dt / n;
}

// Round 0 runs first in this fresh process (cold), then `rounds` warm
// rounds; returns [cold, median of the warm ones (null if none)].
async function bench(fn, n, rounds) {
  const xs = [];
  for (let r = 0; r <= rounds; r++) { gc(); xs.push(await fn(n)); }
  const cold = xs.shift();
  return [cold, xs.length ? median(xs) : null];
}

function report(w, key, [cold, warm]) {
  if (warm !== null) result(w, key, warm);
  result(w, `cold_${key}`, cold);
}

async function main() {
  const n = nArg ? Number(nArg) : undefined;
  const rounds = roundsArg ? Number(roundsArg) : (which === 'W5' || which === 'W6' ? 3 : 5);
  if (which === 'W1') report('W1', 'ns_per_task', await bench(w1, n || 100000, rounds));
  else if (which === 'W2') report('W2', 'wall_ms', await bench(w2, n || 20000, rounds));
  else if (which === 'W3') report('W3', 'ms_raise_to_raised', await bench(w3, n || 10000, rounds));
  else if (which === 'W4') report('W4', 'ns_per_msg', await bench(w4, n || 1000000, rounds));
  else if (which === 'W5') {
    const trips = n || 2000;
    const [cold, wall] = await bench(w5, trips, rounds);
    report('W5', 'wall_s', [cold, wall]);
    if (wall !== null) result('W5', 'trips_per_s', CLIENTS * trips / wall);
    result('W5', 'cold_trips_per_s', CLIENTS * trips / cold);
  } else if (which === 'W6') report('W6', 'ms_per_proc', await bench(w6, n || 400, rounds));
  else { console.error('usage: w_node.js W1|W2|W3|W4|W5|W6 [n] [rounds]'); process.exit(2); }
}

main().catch((e) => { console.error(e); process.exit(1); });
