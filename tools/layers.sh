#!/usr/bin/env bash
# The layer check (make layers, part of make test): engine/ is core/ (the
# engine, scheduler, tasks, scopes), io/ (the primitives) and cli/ (the
# runner and the REPL), with braid.h and init.c (the library list) on top.
# Fails, naming the file and the line crossed, when
#  - a file in core/ includes anything from io/ or cli/, or calls a
#    function defined there (init.c's luaopen_braid is public: braid.h);
#  - a file in io/ or cli/ includes core.h (it sees the core through
#    braid.h and core/prim.h only), or calls a core function that neither
#    header declares;
#  - a file in io/ calls into cli/, or one in cli/ into io/.
# Includes are read from the sources, calls from the objects (nm).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bad=0
fail () { echo "layers: $*"; bad=1; }

# Includes.
while IFS= read -r l; do
  [ -n "$l" ] && fail "${l%%:#*}: crosses a line: #${l#*:#}"
done < <(grep -nE '#include "(io|cli)/' engine/core/*.[ch];
         grep -nE '#include "([^"]*/)?core\.h"' engine/io/*.[ch] engine/cli/*.[ch];
         grep -nE '#include "cli/' engine/io/*.[ch];
         grep -nE '#include "io/' engine/cli/*.[ch])

# Calls: what each object needs (U) against what each layer defines (T).
defined () { for o in "$@"; do nm -g --defined-only "$o" | awk '$2 ~ /[TDBR]/ {print $3}'; done | sort -u; }
needs () { nm -u "$1" | awk '{print $2}' | sort -u; }
for d in core io cli; do
  ls "$BUILD/$d"/*.o >/dev/null 2>&1 || { fail "no objects in $BUILD/$d (build first)"; continue; }
done
core_defs=$(defined "$BUILD"/core/*.o)
io_defs=$(defined "$BUILD"/io/*.o)
cli_defs=$(defined "$BUILD"/cli/*.o)
# What io/ and cli/ may call in the core: braid.h's and prim.h's names.
allowed=$(grep -ohE '\b(braid_[a-z_]+|braid__[a-z_]+|luaopen_braid)[[:space:]]*\(' \
            engine/braid.h engine/core/prim.h | tr -d '( \t' | sort -u)
public=$(grep -ohE '\b(braid_[a-z_]+|luaopen_braid)[[:space:]]*\(' engine/braid.h |
           tr -d '( \t' | sort -u)
for o in "$BUILD"/core/*.o; do
  for s in $(comm -12 <(needs "$o") <(printf '%s\n' $io_defs $cli_defs | sort -u)); do
    fail "engine/core/$(basename "${o%.o}").c calls $s, defined in io/ or cli/"
  done
  for s in $(comm -12 <(needs "$o") <(defined "$BUILD/init.o")); do
    grep -qx "$s" <<<"$public" ||
      fail "engine/core/$(basename "${o%.o}").c calls $s, defined in init.c and not public"
  done
done
for layer in io cli; do
  for o in "$BUILD/$layer"/*.o; do
    src="engine/$layer/$(basename "${o%.o}").c"
    for s in $(comm -12 <(needs "$o") <(printf '%s\n' $core_defs | sort -u)); do
      grep -qx "$s" <<<"$allowed" ||
        fail "$src calls $s, a core function that braid.h and core/prim.h do not declare"
    done
  done
done
for s in $(for o in "$BUILD"/io/*.o; do needs "$o"; done | sort -u | comm -12 - <(printf '%s\n' $cli_defs | sort -u)); do
  fail "io/ calls $s, defined in cli/"
done
for s in $(for o in "$BUILD"/cli/*.o; do needs "$o"; done | sort -u | comm -12 - <(printf '%s\n' $io_defs | sort -u)); do
  fail "cli/ calls $s, defined in io/"
done
if [ "$bad" -ne 0 ]; then echo "layers: FAILED"; exit 1; fi
echo "layers: ok (core/ $(ls engine/core/*.c | wc -l) files, io/ $(ls engine/io/*.c | wc -l), cli/ $(ls engine/cli/*.c | wc -l))"
