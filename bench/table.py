"""Turn the lines collected by bench/run into one results table, printed twice:
aligned for the terminal, then as Markdown for bench/RESULTS.md.

usage: /usr/bin/python3 bench/table.py RESULTS_FILE
Input lines: "RESULT W1 braid ns_per_task=412.3", "FAIL W1 trio",
"STATUS braid pending" (what to show where an implementation has no number),
"NOTE W4 trio: ..." (a remark printed below the table).
Every ratio reads the same way: braid/floor >= 1 is braid's overhead over the
floor and peer/braid > 1 means braid is that many times better than the peer.
All metrics are lower-is-better except W5's round trips/s, whose ratios are
taken the other way round (floor/braid, braid/peer) so that they still read so.
Each time metric has a warm row (median of the warm rounds in one process) and
a cold one (the first round in a fresh process; bench/README.md).
W5's wall-s rows are 100,000 / round trips/s: the measured wall s for a full-size
run (50 x 2,000), the same rate scaled to 100k round trips for a scaled-down one.
"""
import sys

ROWS = [  # (workload, key, label)
    ("W1", "ns_per_task", "ns per task"),
    ("W2", "wall_ms", "wall ms (ideal 50)"),
    ("W2", "bytes_per_task", "bytes per sleeping task"),
    ("W3", "ms_raise_to_raised", "ms raise -> gather raised"),
    ("W4", "ns_per_msg", "ns per message"),
    ("W5", "wall_s", "wall s per 100k round trips"),
    ("W5", "trips_per_s", "round trips/s (higher is better)"),
    ("W6", "ms_per_proc", "ms per process"),
]
# Each time row has a cold twin: the first round in a fresh process (a
# median of such first rounds for W1-W4; bench/run's cold_runs), where the
# plain row is the median of the warm rounds that follow it in one process.
ROWS = [r for w, key, label in ROWS for r in
        ([(w, key, label)] if key == "bytes_per_task" else
         [(w, key, label + ", warm"), (w, "cold_" + key, label + ", cold")])]
HIGHER_IS_BETTER = {("W5", "trips_per_s"), ("W5", "cold_trips_per_s")}
IMPLS = ["floor", "braid", "asyncio", "uvloop", "trio", "node", "cqueues", "luv"]
PEERS = ["asyncio", "uvloop", "trio", "node", "cqueues", "luv"]
FLOOR_NOTES = [
    "W1 floor: stock lua5.4, coroutine.create + resume of each task in turn.",
    "W2 floor: wall ms from C on raw libuv (one uv_timer_t per task); bytes from a parked stock-Lua coroutine.",
    "W3 floor: stock lua5.4, a cancel token resumed into each parked coroutine, then coroutine.close runs its <close>.",
    "W4 floor: stock lua5.4, two coroutines and a tiny scheduler (a run queue resumed in turn) passing values through two 1-slot queues.",
    "W5 floor: C on raw libuv (bench/w5_uv.c), echo server and 50 clients in one loop; reads into a fixed buffer, uv_try_write.",
    "W6 floor: C on raw libuv (bench/w6_uv.c), uv_spawn with 8 in flight, the child's stdio ignored; floor_pipes below reads stdout and stderr through pipes, as braid.exec does.",
]

values, fails, status, extras, notes = {}, set(), {}, [], []
for line in open(sys.argv[1]):
    f = line.split()
    if not f:
        continue
    if f[0] == "RESULT" and len(f) == 4 and "=" in f[3]:
        w, impl, (key, v) = f[1], f[2], f[3].split("=", 1)
        if impl in IMPLS and (w, key) in {(r[0], r[1]) for r in ROWS}:
            values[(w, key, impl)] = float(v)
        elif key != "parked":
            extras.append((w, impl, key, float(v)))
    elif f[0] == "FAIL" and len(f) >= 3:
        fails.add((f[1], f[2]))
    elif f[0] == "STATUS" and len(f) >= 3:
        status[f[1]] = " ".join(f[2:])
    elif f[0] == "NOTE" and len(f) >= 2:
        notes.append(" ".join(f[1:]))


# W5: the wall row is derived from the rate (see the docstring).
for (w, key, impl), v in list(values.items()):
    if (w, key) in HIGHER_IS_BETTER and v > 0:
        values[("W5", key.replace("trips_per_s", "wall_s"), impl)] = 1e5 / v


def fmt(v):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(w, key, impl):
    if (w, key, impl) in values:
        return fmt(values[(w, key, impl)])
    if (w, impl) in fails:
        return "FAIL"
    return status.get(impl, "-")


def ratio(w, key, num, den):
    a, b = values.get((w, key, num)), values.get((w, key, den))
    if a is None or b is None or b == 0 or a == 0:
        return "-"
    if (w, key) in HIGHER_IS_BETTER:
        a, b = b, a
    return f"{a / b:.2f}x"


header = ["workload", "metric"] + IMPLS + ["braid/floor"] + [f"{p}/braid" for p in PEERS]
table = []
for w, key, label in ROWS:
    if not any(v == w for v, _ in fails) and not any(k[0] == w for k in values):
        continue  # workload not run
    row = [w, label] + [cell(w, key, i) for i in IMPLS]
    row += [ratio(w, key, "braid", "floor")] + [ratio(w, key, p, "braid") for p in PEERS]
    table.append(row)

ran = {r[0] for r in table}
FLOOR_NOTES = [nt for nt in FLOOR_NOTES if nt.split()[0] in ran]

widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]
print()
for r in [header] + table:
    print("  ".join(c.rjust(wd) if i > 1 else c.ljust(wd) for i, (c, wd) in enumerate(zip(r, widths))))
print()
for note in FLOOR_NOTES:
    print(note)
extras = [f"{w} {impl} {key.replace('_', ' ')} = {fmt(v)}" for w, impl, key, v in extras]
for e in extras:
    print(f"Also measured: {e}")
for nt in notes:
    print(f"Note: {nt}")

print("\nMarkdown:\n")
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
for r in table:
    print("| " + " | ".join(r) + " |")
print()
for note in FLOOR_NOTES:
    print(f"- {note}")
for e in extras:
    print(f"- also measured: {e}")
for nt in notes:
    print(f"- note: {nt}")
