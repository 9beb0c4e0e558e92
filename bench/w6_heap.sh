#!/usr/bin/env bash
# bench/w6_heap.sh [n] [sets] — W6 (n x /bin/true, 8 at once; ms per process)
# with and without 200 MB of live heap in the parent, side by side in one
# sitting: braid (its own vfork, engine/io/vfork.c), asyncio, a plain C posix_spawn loop, a C
# fork+exec loop, libuv's uv_spawn floor (bench/w6_uv.c) and, when OLD_BRAID
# names a braid runner built before issue 15, braid on uv_spawn; when
# BASE_BRAID names another braid runner (say main's build), it as braid_base.
# braid_null is braid.exec with stdout and stderr to /dev/null: the C loop's
# I/O (it captures nothing); the braid column (both captured through pipes,
# exec's default) stays the headline. The sets
# are interleaved (every program once per set, `sets` times) and each cell
# is the median of its sets' medians, so load from other jobs falls on all
# of them alike; read the ratios. Prints a Markdown table.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-400}; SETS=${2:-3}; PY=/usr/bin/python3
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
cc -O2 -o "$TMP/w6_spawn" bench/w6_spawn.c || exit 1
cc -O2 -o "$TMP/w6_uv" bench/w6_uv.c $(pkg-config --cflags --libs libuv) || exit 1
declare -A CMD
CMD[braid]="build/braid bench/w_braid.lua W6 $N 3"
CMD[braid_null]="build/braid bench/w_braid.lua W6 $N 3 null"
[ -n "${OLD_BRAID:-}" ] && CMD[braid_uv_spawn]="$OLD_BRAID bench/w_braid.lua W6 $N 3"
[ -n "${BASE_BRAID:-}" ] && CMD[braid_base]="$BASE_BRAID bench/w_braid.lua W6 $N 3"
CMD[asyncio]="$PY bench/w_asyncio.py W6 $N 3"
CMD[c_posix_spawn]="$TMP/w6_spawn spawn $N 3 HEAP"
CMD[c_fork]="$TMP/w6_spawn fork $N 3 HEAP"
CMD[uv_spawn_floor]="$TMP/w6_uv W6 $N 3"
IMPLS=(braid braid_null asyncio c_posix_spawn c_fork uv_spawn_floor)
[ -n "${OLD_BRAID:-}" ] && IMPLS+=(braid_uv_spawn)
[ -n "${BASE_BRAID:-}" ] && IMPLS+=(braid_base)
for heap in 0 200; do
  for ((s = 0; s < SETS; s++)); do
    for impl in "${IMPLS[@]}"; do
      [ "$impl" = uv_spawn_floor ] && [ "$heap" != 0 ] && continue  # no heap option
      cmd=${CMD[$impl]//HEAP/$heap}
      v=$(W6_HEAP_MB=$heap timeout 300 $cmd | awk -F= '/^RESULT W6/ && /ms_per_proc/ {print $2; exit}')
      [ -n "$v" ] || { echo "bench: $impl failed (heap $heap)" >&2; v=nan; }
      echo "$heap $impl $v" >>"$TMP/res"
    done
  done
done
$PY - "$TMP/res" "${IMPLS[@]}" <<'PYEOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    heap, impl, v = line.split()
    rows.setdefault((heap, impl), []).append(float(v))
impls = sys.argv[2:]
med = {k: statistics.median(v) for k, v in rows.items()}
print("| heap | " + " | ".join(impls) + " | braid/asyncio | braid/c_posix_spawn | braid_null/c_posix_spawn |")
print("|---|" + "---:|" * (len(impls) + 3))
for heap in ("0", "200"):
    cells = [("%.2f" % med[(heap, i)]) if (heap, i) in med else "-" for i in impls]
    b, c = med[(heap, "braid")], med[(heap, "c_posix_spawn")]
    print(f"| {heap} MB | " + " | ".join(cells) +
          f" | {b / med[(heap, 'asyncio')]:.2f}x | {b / c:.2f}x | {med[(heap, 'braid_null')] / c:.2f}x |")
PYEOF
