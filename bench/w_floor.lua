-- The floors: what stock Lua 5.4 plain coroutines cost, with no scheduler.
-- usage: lua5.4 bench/w_floor.lua W1|W2|W3|W4 [n] [rounds]
--   (round 0, the cold one, runs first; then `rounds` warm rounds)
-- Prints RESULT lines; exits non-zero (via assert/error) if the work was not all done.
-- Times with os.clock() (CPU seconds, microsecond resolution): stock Lua has no
-- finer wall clock, and every floor interval here is CPU-bound.

local which, n, rounds = arg[1], tonumber(arg[2]), tonumber(arg[3])
local clock = os.clock

local R = dofile((arg[0]:match("^(.*)/") or ".") .. "/report.lua")
local report = R.report

-- W1: run 100k no-op tasks, each a coroutine.
--   floor:     create + resume each in turn (what a lazy scheduler can reach)
--   floor_all: create all, then resume all (spawn-all-then-await-all, eagerly)
local function w1()
  n, rounds = n or 100000, rounds or 5
  local done = 0
  local function noop() done = done + 1 end
  local each, all = {}, {}
  for r = 0, rounds do
    collectgarbage(); done = 0
    local t0 = clock()
    for _ = 1, n do
      local co = coroutine.create(noop)
      assert(coroutine.resume(co))
    end
    each[r] = (clock() - t0) * 1e9 / n
    assert(done == n, "W1 floor: not every coroutine ran")

    collectgarbage(); done = 0
    local cos = {}
    t0 = clock()
    for i = 1, n do cos[i] = coroutine.create(noop) end
    for i = 1, n do assert(coroutine.resume(cos[i])) end
    all[r] = (clock() - t0) * 1e9 / n
    assert(done == n, "W1 floor_all: not every coroutine ran")
  end
  report("W1", "floor", "ns_per_task", each)
  report("W1", "floor_all", "ns_per_task", all)
end

-- W2 (memory floor only): park n coroutines, each suspended inside a function
-- call as a sleeping task would be. The runner measures max RSS at n=1 and n=20000.
local function w2()
  n = n or 20000
  local parked = {}
  local function sleeper() coroutine.yield("sleep", 0.05); return true end
  for i = 1, n do
    local co = coroutine.create(sleeper)
    assert(coroutine.resume(co))
    parked[i] = co
  end
  local count = 0
  for i = 1, n do
    if coroutine.status(parked[i]) == "suspended" then count = count + 1 end
  end
  assert(count == n, "W2 floor: not every coroutine parked")
  io.write(string.format("RESULT W2 floor parked=%d\n", n))
end

-- W3: n siblings parked with a <close> guard, one raiser. At the raise, a
-- hand-written "gather" resumes each sibling with a cancel token (it raises),
-- closes it (its <close> runs), then re-raises the first error.
local function w3()
  n, rounds = n or 10000, rounds or 5
  local CANCEL, BOOM = setmetatable({}, {__name = "cancel"}), setmetatable({}, {__name = "boom"})
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local closed = 0
    local guard_mt = {__close = function() closed = closed + 1 end}
    local function sibling()
      local guard <close> = setmetatable({}, guard_mt)
      local tok = coroutine.yield("sleep", 10)
      if tok == CANCEL then error(CANCEL) end
      error("W3 floor: a sibling woke up without being cancelled")
    end
    local t_raise
    local function raiser()
      coroutine.yield("sleep", 0.01)
      t_raise = clock()
      error(BOOM)
    end
    local cos = {}
    for i = 1, n do cos[i] = coroutine.create(sibling); assert(coroutine.resume(cos[i])) end
    local rco = coroutine.create(raiser)
    assert(coroutine.resume(rco))          -- parks in its "sleep"

    local function gather()
      local ok, err = coroutine.resume(rco)  -- the raiser's timer fires
      assert(not ok)
      for i = 1, n do
        local ok2, e2 = coroutine.resume(cos[i], CANCEL)
        assert(not ok2 and e2 == CANCEL)
        coroutine.close(cos[i])
      end
      error(err, 0)
    end
    local ok, err = pcall(gather)
    local t1 = clock()
    assert(not ok and rawequal(err, BOOM), "W3 floor: gather did not raise the raiser's error")
    assert(closed == n, "W3 floor: only " .. closed .. " of " .. n .. " cleanups ran")
    samples[r] = (t1 - t_raise) * 1e3
  end
  report("W3", "floor", "ms_raise_to_raised", samples)
end

-- W4: two coroutines ping-pong through two 1-slot queues, driven by a tiny
-- scheduler: a run queue of ready coroutines, resumed in turn. A full send or
-- an empty recv parks the coroutine on the queue (yield); the other side puts
-- it back on the run queue. n messages (n/2 round trips); ns per message.
local function w4()
  n, rounds = n or 1000000, rounds or 5
  local trips = n // 2
  local yield, resume = coroutine.yield, coroutine.resume
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local runq, head, tail = {}, 1, 0
    local function ready(co) tail = tail + 1; runq[tail] = co end
    local function chan() return {full = false, v = nil, rw = false, sw = false} end
    local function send(ch, v, self)
      while ch.full do ch.sw = self; yield() end
      ch.v, ch.full = v, true
      local w = ch.rw
      if w then ch.rw = false; ready(w) end
    end
    local function recv(ch, self)
      while not ch.full do ch.rw = self; yield() end
      local v = ch.v
      ch.v, ch.full = nil, false
      local w = ch.sw
      if w then ch.sw = false; ready(w) end
      return v
    end
    local ping, pong = chan(), chan()
    local got, echoed = 0, 0
    local pinger, ponger
    pinger = coroutine.create(function()
      for i = 1, trips do
        send(ping, i, pinger)
        local v = recv(pong, pinger)
        if v ~= i then error("W4 floor: round trip " .. i .. " came back as " .. tostring(v)) end
        got = got + 1
      end
    end)
    ponger = coroutine.create(function()
      local sum = 0
      for _ = 1, trips do
        local v = recv(ping, ponger)
        sum = sum + v
        send(pong, v, ponger)
      end
      echoed = sum
    end)
    local t0 = clock()
    ready(pinger); ready(ponger)
    while head <= tail do
      local co = runq[head]
      runq[head] = nil
      if head == tail then head, tail = 1, 0 else head = head + 1 end
      local ok, err = resume(co)
      if not ok then error(err, 0) end
    end
    samples[r] = (clock() - t0) * 1e9 / (2 * trips)
    assert(got == trips and echoed == trips * (trips + 1) // 2,
      "W4 floor: not every message was delivered (" .. got .. " of " .. trips .. " round trips)")
    assert(coroutine.status(pinger) == "dead" and coroutine.status(ponger) == "dead")
  end
  report("W4", "floor", "ns_per_msg", samples)
end

local fns = {W1 = w1, W2 = w2, W3 = w3, W4 = w4}
assert(fns[which], "usage: w_floor.lua W1|W2|W3|W4 [n] [rounds]")
fns[which]()
