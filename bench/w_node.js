// Node's side of W1..W3 (async functions + Promise.all).
// usage: node --expose-gc bench/w_node.js W1|W2|W3 [n] [rounds]
// Prints RESULT lines; exits non-zero if the work was not all done.
'use strict';
const { performance } = require('node:perf_hooks');
const assert = require('node:assert');

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

async function bench(fn, n, rounds) {
  const xs = [];
  for (let r = 0; r < rounds; r++) { gc(); xs.push(await fn(n)); }
  return median(xs);
}

async function main() {
  const n = nArg ? Number(nArg) : undefined;
  const rounds = roundsArg ? Number(roundsArg) : 5;
  if (which === 'W1') result('W1', 'ns_per_task', await bench(w1, n || 100000, rounds));
  else if (which === 'W2') result('W2', 'wall_ms', await bench(w2, n || 20000, rounds));
  else if (which === 'W3') result('W3', 'ms_raise_to_raised', await bench(w3, n || 10000, rounds));
  else { console.error('usage: w_node.js W1|W2|W3 [n] [rounds]'); process.exit(2); }
}

main().catch((e) => { console.error(e); process.exit(1); });
