// w7_node.js: W7 in Node: `get URL N INFLIGHT ROUNDS` with fetch (undici,
// keep-alive), INFLIGHT workers pulling from one counter.
const [mode, url, n, inflight, rounds] = process.argv.slice(2);
async function round() {
  let next = 0;
  const t0 = performance.now();
  const worker = async () => {
    while (next < +n) {
      next++;
      const res = await fetch(url);
      const body = await res.arrayBuffer();
      if (res.status !== 200 || body.byteLength !== 1024) throw new Error("bad response");
    }
  };
  await Promise.all(Array.from({length: +inflight}, worker));
  return performance.now() - t0;
}
(async () => {
  if (mode !== "get") throw new Error("usage: get URL N INFLIGHT ROUNDS");
  const r = [];
  for (let k = 0; k < +rounds; k++) r.push(await round());
  r.sort((a, b) => a - b);
  console.log(`RESULT W7 node get_ms=${r[r.length >> 1].toFixed(1)}`);
})();
