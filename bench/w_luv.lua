-- luv's side of W1..W4 and W6 (Debian lua-luv, on stock lua5.4), written as
-- a luv user writes coroutine code: a run queue of ready coroutines drained
-- by one idle handle (a handle per task costs twice as much), a timer per
-- sleeper, a callback that resumes the coroutine that started the request.
-- usage: lua5.4 bench/w_luv.lua W1|W2|W3|W4|W6 [n] [rounds]
--   (round 0, the cold one, runs first; then `rounds` warm rounds)
-- Prints RESULT lines; exits non-zero (via assert/error) if the work was not all done.

local uv = require "luv"
local which, n, rounds = arg[1], tonumber(arg[2]), tonumber(arg[3])
local function now() return uv.hrtime() * 1e-9 end

local R = dofile((arg[0]:match("^(.*)/") or ".") .. "/report.lua")
local function report(w, key, samples) R.report(w, "luv", key, samples) end

-- The scheduler: ready coroutines in a queue, resumed in turn by one idle
-- handle; an error in any of them stops the loop and is raised by `run`.
local runq, head, tail = {}, 1, 0
local idle = uv.new_idle()
local failure
local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok and failure == nil then failure = {err}; uv.stop() end
end
local function drain()
  while head <= tail do
    local co = runq[head]
    runq[head] = nil
    head = head + 1
    resume(co)
  end
  head, tail = 1, 0
  idle:stop()
end
local function ready(co)
  if head > tail then idle:start(drain) end
  tail = tail + 1
  runq[tail] = co
end
local function spawn(f) ready(coroutine.create(f)) end

-- Runs main as a coroutine on the loop until the loop has nothing left.
local function run(main)
  failure = nil
  spawn(main)
  uv.run()
  if failure then error(failure[1], 0) end
end

-- W1: spawn n no-op tasks, then await all n (the last one wakes main).
local function w1()
  n, rounds = n or 100000, rounds or 5
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local done, main = 0, nil
    local function noop()
      done = done + 1
      if done == n then ready(main) end
    end
    run(function()
      main = coroutine.running()
      local t0 = now()
      for _ = 1, n do spawn(noop) end
      coroutine.yield()
      samples[r] = (now() - t0) * 1e9 / n
    end)
    assert(done == n, "W1 luv: only " .. done .. " of " .. n .. " tasks ran")
  end
  report("W1", "ns_per_task", samples)
end

local function sleep(s)
  local co, t = coroutine.running(), uv.new_timer()
  t:start(math.floor(s * 1000), 0, function() t:close(); resume(co) end)
  coroutine.yield()
end

-- W2: n tasks each sleeping 50 ms on a timer of its own.
local function w2()
  n, rounds = n or 20000, rounds or 5
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local done, main = 0, nil
    local function sleeper()
      sleep(0.05)
      done = done + 1
      if done == n then ready(main) end
    end
    run(function()
      main = coroutine.running()
      local t0 = now()
      for _ = 1, n do spawn(sleeper) end
      coroutine.yield()
      samples[r] = (now() - t0) * 1e3
    end)
    assert(done == n, "W2 luv: only " .. done .. " of " .. n .. " sleepers woke")
  end
  report("W2", "wall_ms", samples)
end

-- W3: n siblings on 10 s timers, each holding a <close> guard, plus one that
-- raises after 10 ms. The hand-written gather, in the raiser's error path:
-- stop each sibling's timer, resume it with a cancel token (it raises), close
-- it (its guard runs), then raise the first error.
local function w3()
  n, rounds = n or 10000, rounds or 5
  local CANCEL, BOOM = setmetatable({}, {__name = "cancel"}), setmetatable({}, {__name = "boom"})
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local closed, t_raise = 0, nil
    local guard_mt = {__close = function() closed = closed + 1 end}
    local cos, timers = {}, {}
    for i = 1, n do
      cos[i] = coroutine.create(function()
        local guard <close> = setmetatable({}, guard_mt)
        timers[i] = uv.new_timer()
        timers[i]:start(10000, 0, function() resume(cos[i]) end)
        if coroutine.yield() == CANCEL then error(CANCEL) end
        error("W3 luv: a sibling slept its full 10 s")
      end)
      assert(coroutine.resume(cos[i]))
    end
    local ok, err = pcall(run, function()
      local rt = uv.new_timer()
      local raiser = coroutine.running()
      rt:start(10, 0, function() rt:close(); resume(raiser) end)
      coroutine.yield()
      t_raise = now()
      local ok1, e1 = pcall(error, BOOM)   -- the raise, caught by the gather
      for i = 1, n do
        timers[i]:close()
        local ok2, e2 = coroutine.resume(cos[i], CANCEL)
        assert(not ok2 and e2 == CANCEL)
        coroutine.close(cos[i])
      end
      error(e1, 0)
    end)
    local t1 = now()
    assert(not ok and rawequal(err, BOOM), "W3 luv: gather did not raise the raiser's error: " .. tostring(err))
    assert(closed == n, "W3 luv: only " .. closed .. " of " .. n .. " cleanups ran")
    uv.run()   -- let the closed timers' handles go
    samples[r] = (t1 - t_raise) * 1e3
  end
  report("W3", "ms_raise_to_raised", samples)
end

-- W4: two coroutines ping-pong through two 1-slot queues; a blocked side
-- parks itself on the queue, the other side puts it back on the run queue.
local function w4()
  n, rounds = n or 1000000, rounds or 5
  local trips = n // 2
  local yield = coroutine.yield
  local samples = {}
  local function chan() return {full = false, v = nil, rw = false, sw = false} end
  local function send(ch, v)
    while ch.full do ch.sw = coroutine.running(); yield() end
    ch.v, ch.full = v, true
    local w = ch.rw
    if w then ch.rw = false; ready(w) end
  end
  local function recv(ch)
    while not ch.full do ch.rw = coroutine.running(); yield() end
    local v = ch.v
    ch.v, ch.full = nil, false
    local w = ch.sw
    if w then ch.sw = false; ready(w) end
    return v
  end
  for r = 0, rounds do
    collectgarbage()
    local ping, pong = chan(), chan()
    local got, echoed = 0, 0
    local t0 = now()
    run(function()
      spawn(function()
        for i = 1, trips do
          send(ping, i)
          local v = recv(pong)
          if v ~= i then error("W4 luv: round trip " .. i .. " came back as " .. tostring(v)) end
          got = got + 1
        end
      end)
      spawn(function()
        local sum = 0
        for _ = 1, trips do
          local v = recv(ping)
          sum = sum + v
          send(pong, v)
        end
        echoed = sum
      end)
    end)
    samples[r] = (now() - t0) * 1e9 / (2 * trips)
    assert(got == trips and echoed == trips * (trips + 1) // 2,
      "W4 luv: not every message was delivered (" .. got .. " of " .. trips .. " round trips)")
  end
  report("W4", "ns_per_msg", samples)
end

-- W6: run /bin/true n times, at most 8 at once, checking each exit status.
-- W6_HEAP_MB (as bench/w6_heap.sh sets it) keeps that much Lua heap live.
local function w6()
  n, rounds = n or 400, rounds or 3
  local heap = {}
  for i = 1, (tonumber(os.getenv("W6_HEAP_MB")) or 0) * 1024 do heap[i] = string.rep("x", 1000) .. i end
  local samples = {}
  for r = 0, rounds do
    local started, ok = 0, 0
    local t0
    local function worker()
      local co = coroutine.running()
      while started < n do
        started = started + 1
        local handle
        handle = uv.spawn("/bin/true", {args = {}}, function(code, signal)
          handle:close()
          resume(co, code, signal)
        end)
        assert(handle, "W6 luv: spawn failed")
        local code, signal = coroutine.yield()
        if code ~= 0 or signal ~= 0 then error("W6 luv: /bin/true exited " .. code .. "/" .. signal) end
        ok = ok + 1
      end
    end
    t0 = now()
    run(function() for _ = 1, 8 do spawn(worker) end end)
    samples[r] = (now() - t0) * 1e3 / n
    assert(ok == n, "W6 luv: only " .. ok .. " of " .. n .. " processes succeeded")
  end
  assert(#heap >= 0)
  report("W6", "ms_per_proc", samples)
end

local fns = {W1 = w1, W2 = w2, W3 = w3, W4 = w4, W6 = w6}
assert(fns[which], "usage: w_luv.lua W1|W2|W3|W4|W6 [n] [rounds]")
fns[which]()
