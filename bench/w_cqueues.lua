-- cqueues' side of W1..W4 (Debian lua-cqueues, on stock lua5.4).
-- usage: lua5.4 bench/w_cqueues.lua W1|W2|W3|W4 [n] [rounds]
--   (round 0, the cold one, runs first; then `rounds` warm rounds)
-- Prints RESULT lines; exits non-zero (via assert/error) if the work was not all done.
-- Each workload is written as a cqueues user would: cq:wrap per task, the
-- controller's loop as "await all", a condition variable where braid has a
-- channel or a cancel scope (cqueues has neither).

local cqueues = require "cqueues"
local condition = require "cqueues.condition"
local now = cqueues.monotime

local which, n, rounds = arg[1], tonumber(arg[2]), tonumber(arg[3])

local R = dofile((arg[0]:match("^(.*)/") or ".") .. "/report.lua")
local function report(w, key, samples) R.report(w, "cqueues", key, samples) end

-- Runs the controller until every coroutine has ended; raises the first error.
local function loop(cq)
  local ok, err = cq:loop()
  if not ok then error(err, 0) end
end

-- W1: wrap n no-op coroutines, then run the loop until all have ended.
local function w1()
  n, rounds = n or 100000, rounds or 5
  local done = 0
  local function noop() done = done + 1 end
  local samples = {}
  for r = 0, rounds do
    collectgarbage(); done = 0
    local cq = cqueues.new()
    local t0 = now()
    for _ = 1, n do cq:wrap(noop) end
    loop(cq)
    samples[r] = (now() - t0) * 1e9 / n
    assert(done == n, "W1 cqueues: only " .. done .. " of " .. n .. " tasks ran")
  end
  report("W1", "ns_per_task", samples)
end

-- W2: n coroutines each sleeping 50 ms; wall ms until the last has woken.
local function w2()
  n, rounds = n or 20000, rounds or 5
  local done = 0
  local function sleeper() cqueues.sleep(0.05); done = done + 1 end
  local samples = {}
  for r = 0, rounds do
    collectgarbage(); done = 0
    local cq = cqueues.new()
    local t0 = now()
    for _ = 1, n do cq:wrap(sleeper) end
    loop(cq)
    samples[r] = (now() - t0) * 1e3
    assert(done == n, "W2 cqueues: only " .. done .. " of " .. n .. " sleepers woke")
  end
  report("W2", "wall_ms", samples)
end

-- W3: n siblings waiting up to 10 s on a cancel condition, each holding a
-- <close> guard, plus one that raises after 10 ms. The hand-written gather:
-- the loop stops at the raise; set the flag, signal the condition, run the
-- loop until every sibling has returned (its guard closed), re-raise.
local function w3()
  n, rounds = n or 10000, rounds or 5
  local BOOM = setmetatable({}, {__name = "boom"})
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local closed, cancelled = 0, false
    local guard_mt = {__close = function() closed = closed + 1 end}
    local cancel = condition.new()
    local function sibling()
      local guard <close> = setmetatable({}, guard_mt)
      cancel:wait(10)
      if not cancelled then error("W3 cqueues: a sibling slept its full 10 s") end
    end
    local t_raise
    local function raiser()
      cqueues.sleep(0.01)
      t_raise = now()
      error(BOOM)
    end
    local cq = cqueues.new()
    for _ = 1, n do cq:wrap(sibling) end
    cq:wrap(raiser)
    local ok, err = pcall(function()
      local ok1, e1 = cq:loop()
      assert(not ok1, "W3 cqueues: the loop ended without the raise")
      cancelled = true
      cancel:signal()
      loop(cq)
      error(e1, 0)
    end)
    local t1 = now()
    assert(not ok and rawequal(err, BOOM), "W3 cqueues: gather did not raise the raiser's error: " .. tostring(err))
    assert(closed == n, "W3 cqueues: only " .. closed .. " of " .. n .. " cleanups ran")
    samples[r] = (t1 - t_raise) * 1e3
  end
  report("W3", "ms_raise_to_raised", samples)
end

-- W4: two coroutines ping-pong through two 1-slot queues, each with a
-- condition variable; n messages (n/2 round trips); ns per message.
local function w4()
  n, rounds = n or 1000000, rounds or 5
  local trips = n // 2
  local samples = {}
  local function chan() return {full = false, v = nil, c = condition.new()} end
  local function send(ch, v)
    while ch.full do ch.c:wait() end
    ch.v, ch.full = v, true
    ch.c:signal()
  end
  local function recv(ch)
    while not ch.full do ch.c:wait() end
    local v = ch.v
    ch.v, ch.full = nil, false
    ch.c:signal()
    return v
  end
  for r = 0, rounds do
    collectgarbage()
    local ping, pong = chan(), chan()
    local got, echoed = 0, 0
    local cq = cqueues.new()
    local t0 = now()
    cq:wrap(function()
      for i = 1, trips do
        send(ping, i)
        local v = recv(pong)
        if v ~= i then error("W4 cqueues: round trip " .. i .. " came back as " .. tostring(v)) end
        got = got + 1
      end
    end)
    cq:wrap(function()
      local sum = 0
      for _ = 1, trips do
        local v = recv(ping)
        sum = sum + v
        send(pong, v)
      end
      echoed = sum
    end)
    loop(cq)
    samples[r] = (now() - t0) * 1e9 / (2 * trips)
    assert(got == trips and echoed == trips * (trips + 1) // 2,
      "W4 cqueues: not every message was delivered (" .. got .. " of " .. trips .. " round trips)")
  end
  report("W4", "ns_per_msg", samples)
end

local fns = {W1 = w1, W2 = w2, W3 = w3, W4 = w4}
assert(fns[which], "usage: w_cqueues.lua W1|W2|W3|W4 [n] [rounds]")
fns[which]()
