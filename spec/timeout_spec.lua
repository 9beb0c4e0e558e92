local braid = require "braid"
local h = require "helper"

describe("braid.timeout", function()
  it("returns fn's results when it finishes in time", h.virtual(function()
    assert.are.same({1, 2}, {braid.timeout(5, function(a) braid.sleep(1) return a, 2 end, 1)})
  end))

  it("raises a timeout error when the deadline passes, after undoing the sleep", h.virtual(function()
    local t0 = braid.now()
    local ok, e = pcall(braid.timeout, 2, braid.sleep, 100)
    assert.is_false(ok)
    assert.are.equal("timeout", e.kind)
    assert.is_true(braid.is_timeout(e))
    assert.matches("timed out after 2 s", tostring(e))
    assert.are.equal(2, braid.now() - t0)
  end))

  it("with 0 or less fires at the first await", h.virtual(function()
    local log = {}
    local ok, e = pcall(braid.timeout, 0, function()
      log[#log + 1] = "ran"
      braid.sleep(1)
      log[#log + 1] = "unreachable"
    end)
    assert.is_true(braid.is_timeout(e))
    assert.are.same({"ran"}, log)
    ok, e = pcall(braid.timeout, -3, braid.yield)
    assert.is_true(braid.is_timeout(e))
  end))

  it("nests: when the outer deadline fires first, only the outer raises a timeout", h.virtual(function()
    local inner_saw
    local ok, e = pcall(braid.timeout, 1, function()
      local ok2, e2 = pcall(braid.timeout, 10, braid.sleep, 100)
      inner_saw = e2
      error(e2)
    end)
    assert.is_true(braid.is_cancelled(inner_saw))
    assert.is_false(braid.is_timeout(inner_saw))
    assert.is_true(braid.is_timeout(e))
  end))

  it("nests: when both deadlines fall at the same instant, only the outer raises a timeout", h.virtual(function()
    local inner
    local ok, e = pcall(braid.timeout, 1, function()
      local ok2, e2 = pcall(braid.timeout, 1, braid.sleep, 100)
      inner = e2
      error(e2, 0)
    end)
    assert.are.equal("cancelled (deadline passed)", inner.message)
    assert.is_false(braid.is_timeout(inner))
    assert.is_true(braid.is_timeout(e))
  end))

  it("nests: an inner deadline shorter than the outer fires on its own", h.virtual(function()
    local t0 = braid.now()
    local r = braid.timeout(10, function()
      local ok, e = pcall(braid.timeout, 1, braid.sleep, 100)
      assert.is_true(braid.is_timeout(e))
      return braid.now() - t0
    end)
    assert.are.equal(1, r)
  end))

  it("keeps an outside cancel that arrives before the deadline a cancellation", h.virtual(function()
    local t = braid.spawn(function() return braid.timeout(5, braid.sleep, 100) end)
    braid.sleep(1)
    t:cancel("outside")
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("outside", e.reason)
  end))

  it("lets a result delivered in the same turn as the deadline win", h.virtual(function()
    assert.are.equal("just in time", braid.timeout(3, function()
      braid.sleep(3)
      return "just in time"
    end))
  end))

  it("also bounds tasks spawned inside it", h.virtual(function()
    local closed = 0
    local ok, e = pcall(braid.timeout, 1, function()
      braid.spawn(function()
        local c <close> = setmetatable({}, {__close = function() closed = closed + 1 end})
        braid.sleep(100)
      end)
      braid.sleep(100)
    end)
    assert.is_true(braid.is_timeout(e))
    assert.are.equal(1, closed)
  end))

  it("rejects bad seconds with a usage error", h.run(function()
    local ok, e = pcall(braid.timeout, "soon", print)
    assert.are.equal("usage", e.kind)
    assert.matches("bad argument #1 to 'braid.timeout'", e.message, 1, true)
    ok, e = pcall(braid.timeout, 0 / 0, print)
    assert.matches("NaN", e.message)
  end))
end)

describe("braid.sleep", function()
  it("sleeps at least the given time on the real clock", h.run(function()
    local t0 = braid.now()
    braid.sleep(0.05)
    local dt = braid.now() - t0
    assert.is_true(dt >= 0.049, "slept " .. dt)
    assert.is_true(dt < 5, "slept " .. dt)
  end))

  it("wakes sleepers in deadline order on the virtual clock, at once", h.virtual(function()
    local order = {}
    local t0 = braid.now()
    braid.gather(
      function() braid.sleep(3600) order[#order + 1] = "hour" end,
      function() braid.sleep(60) order[#order + 1] = "minute" end,
      function() braid.sleep(1) order[#order + 1] = "second" end)
    assert.are.same({"second", "minute", "hour"}, order)
    assert.are.equal(3600, braid.now() - t0)
  end))

  -- The timer heap (timer.c, four children a node, keys inline): wake-ups
  -- in (deadline, arming order) whatever the order of arming, with timers
  -- taken out of the middle of the heap by cancellation.
  it("wakes thousands of sleepers in deadline order, ties by arming order, with some cancelled", h.virtual(function()
    local n, woke, tasks, due = 3000, {}, {}, {}
    local seed = 12345
    local function rand(m) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % m end
    local t0 = braid.now()
    for i = 1, n do
      due[i] = rand(200)   -- whole seconds: many ties
      tasks[i] = braid.spawn(function() braid.sleep(due[i]) woke[#woke + 1] = i end)
    end
    braid.yield()   -- every sleeper has armed its timer, in spawn order
    local cancelled = {}
    for i = 1, n, 7 do tasks[i]:cancel(); cancelled[i] = true end
    for i = 1, n do pcall(tasks[i].await, tasks[i]) end
    local expect = {}
    for i = 1, n do if not cancelled[i] then expect[#expect + 1] = i end end
    table.sort(expect, function(a, b) return due[a] < due[b] or (due[a] == due[b] and a < b) end)
    assert.are.same(expect, woke)
    assert.are.equal(199, braid.now() - t0)
  end))

  it("scales to 100k concurrent sleepers", h.run(function()
    local n, woke = 100000, 0
    braid.scope(function(s)
      for i = 1, n do
        s:spawn(function() braid.sleep(0.05 + (i % 7) / 1000) woke = woke + 1 end)
      end
    end)
    assert.are.equal(n, woke)
  end))

  it("rejects a non-number", h.run(function()
    local ok, e = pcall(braid.sleep, {})
    assert.are.equal("usage", e.kind)
    assert.matches("bad argument #1 to 'braid.sleep'", e.message, 1, true)
  end))
end)

describe("braid.yield", function()
  it("lets every other ready task run once", h.run(function()
    local log = {}
    braid.spawn(function() log[#log + 1] = "a"; braid.yield(); log[#log + 1] = "a2" end)
    braid.spawn(function() log[#log + 1] = "b" end)
    braid.yield()
    log[#log + 1] = "root"
    braid.yield()
    assert.are.same({"a", "b", "root", "a2"}, log)
  end))
end)

describe("braid.run with a seed", function()
  it("replays the same interleaving and the same math.random draws", function()
    local function trace()
      local log = {}
      braid.run(function()
        braid.gather(
          function() for _ = 1, 3 do braid.sleep(math.random()) log[#log + 1] = "a" end end,
          function() for _ = 1, 3 do braid.sleep(math.random()) log[#log + 1] = "b" end end)
        log[#log + 1] = math.random(1000000)
      end, {clock = "virtual", seed = 42})
      return table.concat(log, " ", 1, #log - 1) .. " " .. log[#log]
    end
    assert.are.equal(trace(), trace())
  end)
end)

describe("the virtual clock beside live I/O", function()
  -- Time used to stand still while any handle kept the loop alive: an idle
  -- server froze every sleeper (found by the fuzzer's tcp steps).
  it("still jumps while an idle server listens", function()
    -- In a runner bounded by `timeout`, so that a regression fails (124)
    -- instead of hanging the suite.
    local out, err, code = h.sh((os.getenv("BRAID_RUN_ENV") or "") .. " timeout 20 " ..
      os.getenv("BRAID_BIN") .. " --virtual-time -e '" ..
      "local server = braid.tcp.listen(nil, 0, function() end) " ..
      "braid.sleep(3600) server:close() print(braid.now())'")
    assert.are.equal(0, code, err)
    assert.are.equal("3600.0\n", out)
  end)

  it("holds still while a child process runs", h.virtual(function()
    local sleeper = braid.spawn(braid.sleep, 0.5)   -- a timer to jump to
    local r = braid.timeout(1, braid.exec, {"sh", "-c", "sleep 0.2; echo done"})
    assert.are.equal("done\n", r.stdout)
    assert.are.equal(0, braid.now())
    sleeper:await()
    assert.are.equal(0.5, braid.now())
  end))
end)
