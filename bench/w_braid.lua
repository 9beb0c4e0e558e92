-- braid's side of W1..W6.
-- usage: build/braid bench/w_braid.lua W1|W2|W3|W4|W5|W6 [n] [rounds]
--   (round 0, the cold one, runs first; then `rounds` warm rounds)
--   (W5: n = round trips per client; W6: n = processes)
--    or: LUA_CPATH='build/?.so;;' lua5.4 bench/w_braid.lua ...   (module form)
-- Prints RESULT lines; exits non-zero (via assert/error) if the work was not all done.

local braid = rawget(_G, "braid")
local as_module = braid == nil
if as_module then braid = require "braid" end

local which, n, rounds = arg[1], tonumber(arg[2]), tonumber(arg[3])

-- Wall time from braid.now(). If it turns out to be a loop-cached time (uv_now),
-- a CPU-bound interval would read too short, so never report less than the CPU
-- time the interval used (os.clock).
local function stamp() return {braid.now(), os.clock()} end
local function since(s)
  return math.max(braid.now() - s[1], os.clock() - s[2])
end

local R = dofile((arg[0]:match("^(.*)/") or ".") .. "/report.lua")
local median = R.median
local function result(w, key, v) R.result(w, "braid", key, v) end
local function report(w, key, samples) R.report(w, "braid", key, samples) end

-- W1: spawn n no-op tasks, then await all n.
local function w1()
  n, rounds = n or 100000, rounds or 5
  local done = 0
  local function noop() done = done + 1 end
  local samples = {}
  for r = 0, rounds do
    collectgarbage(); done = 0
    local tasks = {}
    local s = stamp()
    for i = 1, n do tasks[i] = braid.spawn(noop) end
    for i = 1, n do tasks[i]:await() end
    samples[r] = since(s) * 1e9 / n
    assert(done == n, "W1 braid: only " .. done .. " of " .. n .. " tasks ran")
  end
  report("W1", "ns_per_task", samples)
end

-- W2: n tasks each sleeping 50 ms concurrently; wall ms from the first spawn
-- until the last await returns. The runner also runs this with rounds=1 at
-- n=1 and n=20000 under /usr/bin/time to get bytes per sleeping task.
local function w2()
  n, rounds = n or 20000, rounds or 5
  local done = 0
  local function sleeper() braid.sleep(0.05); done = done + 1 end
  local samples = {}
  for r = 0, rounds do
    collectgarbage(); done = 0
    local tasks = {}
    local s = stamp()
    for i = 1, n do tasks[i] = braid.spawn(sleeper) end
    for i = 1, n do tasks[i]:await() end
    samples[r] = since(s) * 1e3
    assert(done == n, "W2 braid: only " .. done .. " of " .. n .. " tasks woke")
    assert(samples[r] >= 49, "W2 braid: 50 ms sleeps finished after only " .. samples[r] .. " ms")
  end
  report("W2", "wall_ms", samples)
end

-- W3: n siblings sleeping 10 s, each holding a <close> guard, plus one that
-- raises after 10 ms, all in one gather. ms from the raise until gather raised.
local function w3()
  n, rounds = n or 10000, rounds or 5
  local BOOM = setmetatable({}, {__tostring = function() return "boom" end})
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local closed = 0
    local guard_mt = {__close = function() closed = closed + 1 end}
    local fns = {}
    for i = 1, n do
      fns[i] = function()
        local guard <close> = setmetatable({}, guard_mt)
        braid.sleep(10)
        error("W3 braid: a sibling slept its full 10 s")
      end
    end
    local t_raise
    fns[n + 1] = function()
      braid.sleep(0.01)
      t_raise = stamp()
      error(BOOM)
    end
    local s = stamp()
    local ok, err = pcall(braid.gather, table.unpack(fns))
    local ms = since(t_raise) * 1e3
    assert(not ok and rawequal(err, BOOM),
      "W3 braid: gather did not raise the raiser's error unchanged: " .. tostring(err))
    assert(closed == n, "W3 braid: only " .. closed .. " of " .. n .. " <close> guards ran")
    assert(since(s) < 5, "W3 braid: the gather waited for the sleepers")
    samples[r] = ms
  end
  report("W3", "ms_raise_to_raised", samples)
end

-- W4: two tasks ping-pong over two channels of capacity 1; n messages (a
-- message is one hand-off in one direction, so n/2 round trips). ns per message.
local function w4()
  n, rounds = n or 1000000, rounds or 5
  local trips = n // 2
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local ping, pong = braid.channel(1), braid.channel(1)
    local got, echoed = 0, 0
    local function pinger()
      for i = 1, trips do
        ping:send(i)
        local v, ok = pong:recv()
        if v ~= i or not ok then error("W4 braid: round trip " .. i .. " came back as " .. tostring(v)) end
        got = got + 1
      end
    end
    local function ponger()
      local sum = 0
      for _ = 1, trips do
        local v, ok = ping:recv()
        if not ok then error("W4 braid: ping closed early") end
        sum = sum + v
        pong:send(v)
      end
      echoed = sum
    end
    local s = stamp()
    braid.gather(pinger, ponger)
    samples[r] = since(s) * 1e9 / (2 * trips)
    assert(got == trips and echoed == trips * (trips + 1) // 2,
      "W4 braid: not every message was delivered (" .. got .. " of " .. trips .. " round trips)")
  end
  report("W4", "ns_per_msg", samples)
end

-- W5: TCP echo on 127.0.0.1, server and 50 clients in this one process; each
-- client does n sequential 64-byte round trips (write 64 bytes, read until 64
-- are back, compare). Wall s from the first connect until every client is
-- done; round trips/s. Each client cycles through 16 distinct messages.
local function w5()
  local trips, clients = n or 2000, 50
  rounds = rounds or 3
  local samples = {}
  local total
  for r = 0, rounds do
    collectgarbage()
    local server = braid.tcp.listen("127.0.0.1", 0, function(conn)
      while true do
        local s = conn:read()
        if not s then break end
        conn:write(s)
      end
      conn:close()
    end)
    local port = server:port()
    total = 0
    local fns = {}
    for c = 1, clients do
      local msgs = {}
      for k = 0, 15 do
        msgs[k] = string.format("client %02d message %02d ", c, k):rep(4):sub(1, 64)
        assert(#msgs[k] == 64)
      end
      fns[c] = function()
        local conn = braid.tcp.connect("127.0.0.1", port)
        for i = 1, trips do
          local msg = msgs[i % 16]
          conn:write(msg)
          local got = conn:read(64)
          while got and #got < 64 do
            local more = conn:read(64 - #got)
            got = more and got .. more
          end
          if got ~= msg then error("W5 braid: round trip " .. i .. " came back as " .. tostring(got)) end
          total = total + 1
        end
        conn:close()
      end
    end
    local s = stamp()
    braid.gather(table.unpack(fns))
    samples[r] = since(s)
    server:close()
    assert(total == clients * trips,
      "W5 braid: only " .. total .. " of " .. clients * trips .. " round trips")
  end
  report("W5", "wall_s", samples)
  if #samples > 0 then result("W5", "trips_per_s", total / median(samples)) end
  result("W5", "cold_trips_per_s", total / samples[0])
end

-- W6: run /bin/true n times, at most 8 at once (braid.map with limit 8), each
-- exit status checked. ms per process = wall ms / n. With "null" as the 4th
-- argument, stdout and stderr go to /dev/null instead of being captured
-- (the I/O of the C posix_spawn loop, which captures nothing).
local function w6()
  n, rounds = n or 400, rounds or 3
  local opts = arg[4] == "null" and {stdout = "null", stderr = "null"} or nil
  -- W6_HEAP_MB: that much live Lua heap in the parent (1 MiB strings)
  local heap = {}
  for i = 1, tonumber(os.getenv("W6_HEAP_MB") or 0) do
    heap[i] = string.rep("x", (1 << 20) - 8) .. ("%8d"):format(i)
  end
  local list = {}
  for i = 1, n do list[i] = i end
  local samples = {}
  for r = 0, rounds do
    collectgarbage()
    local ok = 0
    local s = stamp()
    braid.map(list, function()
      assert(braid.exec({"/bin/true"}, opts).code == 0, "W6 braid: /bin/true did not exit 0")
      ok = ok + 1
    end, {limit = 8})
    samples[r] = since(s) * 1e3 / n
    assert(ok == n, "W6 braid: only " .. ok .. " of " .. n .. " processes exited 0")
  end
  report("W6", "ms_per_proc", samples)
end

local fns = {W1 = w1, W2 = w2, W3 = w3, W4 = w4, W5 = w5, W6 = w6}
assert(fns[which], "usage: w_braid.lua W1|W2|W3|W4|W5|W6 [n] [rounds]")
if as_module then braid.run(fns[which]) else fns[which]() end
