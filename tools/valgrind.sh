#!/usr/bin/env bash
# tools/valgrind.sh: `make valgrind`: runs the examples that end on their
# own, the embedding binaries, tools/valgrind_cases.lua (through the runner,
# which calls lua_close) and 30 fuzzer seeds (stock lua5.4 + braid.so; lua.c
# closes its state on a normal exit) under valgrind memcheck. A case passes
# when valgrind reports "ERROR SUMMARY: 0 errors" (definite and indirect
# leaks count as errors) and the program exits with the expected status.
# No suppressions file: none was needed (libuv's thread-pool threads are
# "possibly lost"/"still reachable" at exit, which are not counted).
# Logs: $BUILD/valgrind/*.log. Prints one summary line.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
B=$BUILD/braid
LOGS=$BUILD/valgrind
# memcheck sees inside malloc, not inside braid's arena (engine/core/arena.c):
# every block from malloc, so a use after free is seen.
export BRAID_ARENA=0
mkdir -p "$LOGS"
# --child-silent-after-fork: a child forked by uv_spawn whose exec fails
# (braid.exec of a missing program) would otherwise run its own leak check
# on the parent's heap, copied by fork, and report it all "possibly lost".
VG="valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=1 --child-silent-after-fork=yes"
pass=0 fail=0 failed=""
# run NAME EXPECTED_EXIT CMD...
run() {
  local name=$1 want=$2; shift 2
  local log="$LOGS/$name.log"
  "$@" >"$LOGS/$name.out" 2>&1 </dev/null
  local rc=$?
  if grep -q "ERROR SUMMARY: 0 errors" "$log" 2>/dev/null &&
     ! grep "ERROR SUMMARY" "$log" | grep -qv "ERROR SUMMARY: 0 errors" &&
     [ "$rc" = "$want" ]; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); failed="$failed $name(exit $rc)"
    grep -E "ERROR SUMMARY|definitely lost|indirectly lost" "$log" 2>/dev/null | sed "s/^/  $name: /" >&2
  fi
}
vg() { local name=$1; shift; echo "$VG --log-file=$LOGS/$name.log"; }
run demo 0 $(vg demo) $B examples/demo.lua
run pipeline 0 $(vg pipeline) $B examples/pipeline.lua 20 3
run pipeline_fail 1 $(vg pipeline_fail) $B examples/pipeline.lua 20 3 --fail 5
run parallel_commands 1 $(vg parallel_commands) $B examples/parallel_commands.lua --timeout 1 \
  'echo a' 'sleep 0.1; echo b' 'exit 3' 'sleep 30'
run parallel_keep_going 1 $(vg parallel_keep_going) $B examples/parallel_commands.lua --keep-going --timeout 1 \
  'echo a' 'exit 3' 'sleep 30'
run port_check 0 $(vg port_check) $B examples/port_check.lua --timeout 0.5
run echo_server 130 timeout --preserve-status -s INT 5 $(vg echo_server) $B examples/echo_server.lua
run engine_cases 0 $(vg engine_cases) $B --grace 0.3 tools/valgrind_cases.lua
run engine_fail 1 $(vg engine_fail) $B tools/valgrind_cases.lua fail
run deadlock 1 $(vg deadlock) $B -e 'braid.channel():recv()'
run virtual_time 0 $(vg virtual_time) $B --virtual-time -e 'braid.gather(function() braid.sleep(3600) end, function() braid.sleep(60) end)'
run embed_test 0 $(vg embed_test) $BUILD/embed_test
run embed_app 0 $(vg embed_app) $BUILD/embed-app
run fuzz 0 env LUA_CPATH="$BUILD/?.so;;" $(vg fuzz) lua5.4 tools/fuzz.lua 1 30
echo "valgrind: $pass passed, $fail failed${failed:+ (}${failed# }${failed:+)} (logs in $LOGS)"
[ "$fail" -eq 0 ]
