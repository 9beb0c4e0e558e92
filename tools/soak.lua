-- tools/soak.lua: soak test for braid: the same heavy round, repeated, with
-- memory that must stay flat.
--
--   build/braid tools/soak.lua [rounds=10] [tasks=1000000] [sleepers=100000]
--   make soak                      (10 rounds, full size)
--
-- Each round, on the real clock:
--  (a) `tasks` short-lived tasks, each passing one item through a channel:
--      a spawner starts task i (at most 1000 alive at once, bounded by a
--      semaphore) which sends i on a channel of capacity 64; one collector
--      task receives every item. So a round really creates `tasks` tasks and
--      makes `tasks` channel hand-offs (plus as many semaphore hand-offs).
--      Checked: count, sum of the items, every task ended ok.
--  (b) `sleepers` concurrent sleepers: braid.scope + spawn of `sleepers`
--      tasks that each braid.sleep(0.05). Checked: all woke, each slept
--      >= 50 ms, and at least half were asleep at the same time (the peak is
--      printed: usually all of them; the scheduler starts 20000 ready tasks
--      per loop turn, so on a slow machine the first sleepers can wake
--      before the last ones have started).
-- After each round: the Lua heap after a full collectgarbage() (KB), the
-- process RSS (VmRSS of /proc/self/status, KB) and the round's wall time.
--
-- At the end (with at least 3 rounds) memory must be flat:
--  - Lua heap of the last round within HEAP_TOL_KB (16 KB) of round 2 (round
--    1 warms caches: interned strings, the engine's pools);
--  - RSS of the last round within RSS_TOL_KB (4 MB) of round 3 (RSS moves
--    by allocator noise: glibc keeps freed arenas; a leak of even 8 bytes
--    per task would add 8 MB per round at full size).
-- Exits 1 (the root task raises) when a check fails.
--
-- As a module (dofile returns M) it is used by spec/soak_spec.lua:
-- M.soak{rounds=, tasks=, sleepers=, heap_tol_kb=, rss_tol_kb=, quiet=}
-- -> the per-round rows; it raises when a check fails. It needs a running
-- braid root task (the runner, or braid.run in module form).
local braid = braid or require "braid"

local M = {}

M.HEAP_TOL_KB = 16
M.RSS_TOL_KB = 4096
M.SLEEP = 0.05

local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end
M.rss_kb = rss_kb

local function heap_kb()
  collectgarbage("collect")
  collectgarbage("collect")
  return collectgarbage("count")
end

-- (a) n tasks, each sending its item once; one collector receives them.
local function tasks_through_channel(n)
  local ch = braid.channel(64)
  local sem = braid.semaphore(1000)
  local count, sum, ended = 0, 0, 0
  braid.scope(function(s)
    s:spawn(function()
      for _ = 1, n do
        local v = ch:recv()
        count, sum = count + 1, sum + v
      end
    end)
    local function one(i)
      ch:send(i)
      ended = ended + 1
      sem:release()
    end
    for i = 1, n do
      sem:acquire()
      s:spawn(one, i)
    end
  end)
  assert(count == n, ("collector got %d of %d items"):format(count, n))
  assert(sum == n * (n + 1) // 2, ("sum of items %d, expected %d"):format(sum, n * (n + 1) // 2))
  assert(ended == n, ("%d of %d tasks ended"):format(ended, n))
end

-- (b) n sleepers, all asleep at once.
local function sleepers(n, d)
  local asleep, peak, woke, short = 0, 0, 0, 0
  braid.scope(function(s)
    local function sleeper()
      asleep = asleep + 1
      if asleep > peak then peak = asleep end
      local t0 = braid.now()
      braid.sleep(d)
      if braid.now() - t0 < d - 1e-3 then short = short + 1 end
      asleep = asleep - 1
      woke = woke + 1
    end
    for _ = 1, n do s:spawn(sleeper) end
  end)
  assert(woke == n, ("%d of %d sleepers woke"):format(woke, n))
  assert(peak >= n // 2, ("only %d of %d sleepers were asleep at once"):format(peak, n))
  assert(short == 0, ("%d sleepers woke before %g s"):format(short, d))
  return peak
end

function M.soak(o)
  o = o or {}
  local rounds = o.rounds or 10
  local ntasks = o.tasks or 1000000
  local nsleep = o.sleepers or 100000
  local heap_tol = o.heap_tol_kb or M.HEAP_TOL_KB
  local rss_tol = o.rss_tol_kb or M.RSS_TOL_KB
  local out = o.quiet and function() end or function(...)
    io.stdout:write(string.format(...)) io.stdout:flush()
  end
  out("soak: %d rounds of %d tasks through a channel + %d concurrent %g s sleepers\n",
      rounds, ntasks, nsleep, M.SLEEP)
  out("%5s %12s %10s %9s %9s %9s %10s\n", "round", "lua_kb", "rss_kb", "wall_s",
      "tasks_s", "sleep_s", "peak_asleep")
  -- The rows are made before round 1, so that filling them in allocates
  -- nothing the heap comparison would count.
  local rows = {}
  for r = 1, rounds do
    rows[r] = {round = r, lua_kb = 0, rss_kb = 0, wall = 0, tasks_s = 0, sleep_s = 0, peak = 0}
  end
  for r = 1, rounds do
    local t0 = braid.now()
    tasks_through_channel(ntasks)
    local t1 = braid.now()
    local peak = sleepers(nsleep, M.SLEEP)
    local t2 = braid.now()
    local row = rows[r]
    row.lua_kb, row.rss_kb = heap_kb(), rss_kb()
    row.wall, row.tasks_s, row.sleep_s, row.peak = t2 - t0, t1 - t0, t2 - t1, peak
    out("%5d %12.1f %10d %9.2f %9.2f %9.2f %10d\n", r, row.lua_kb, row.rss_kb,
        row.wall, row.tasks_s, row.sleep_s, row.peak)
  end
  if rounds >= 3 then
    local h2, hN = rows[2].lua_kb, rows[rounds].lua_kb
    local r3, rN = rows[3].rss_kb, rows[rounds].rss_kb
    out("flat? Lua heap round %d - round 2 = %+.1f KB (tolerance %d KB); " ..
        "RSS round %d - round 3 = %+d KB (tolerance %d KB)\n",
        rounds, hN - h2, heap_tol, rounds, rN - r3, rss_tol)
    assert(hN - h2 <= heap_tol,
      ("Lua heap grew from %.1f KB (round 2) to %.1f KB (round %d)"):format(h2, hN, rounds))
    assert(rN - r3 <= rss_tol,
      ("RSS grew from %d KB (round 3) to %d KB (round %d)"):format(r3, rN, rounds))
  end
  return rows
end

if arg and arg[0] and arg[0]:match("soak%.lua$") then
  local rows = M.soak{rounds = tonumber(arg[1]), tasks = tonumber(arg[2]),
                      sleepers = tonumber(arg[3])}
  print(("soak: ok (%d rounds)"):format(#rows))
end

return M
