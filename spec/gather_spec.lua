local braid = require "braid"
local h = require "helper"

local closer = h.closer

describe("braid.gather", function()
  it("returns one value per child, in argument order, nil included", h.virtual(function()
    local a, b, c, d = braid.gather(
      function() braid.sleep(3) return "a", "extra" end,
      function() braid.sleep(1) return nil end,
      function() return 3 end,
      function() braid.sleep(2) end)
    assert.are.same({"a", nil, 3, nil}, {a, b, c, d})
    assert.are.equal(4, select("#", braid.gather(
      function() end, function() end, function() end, function() end)))
  end))

  it("returns at once with no children", h.run(function()
    assert.are.equal(0, select("#", braid.gather()))
    assert.are.equal(0, select("#", braid.gather({})))
  end))

  it("cancels the siblings of a failing child, runs their <close> once and raises the same error", h.virtual(function()
    local err = setmetatable({}, {__tostring = function() return "mine" end})
    local closed = {}
    local t0 = braid.now()
    local ok, e = pcall(braid.gather,
      function() local c <close> = closer(closed, 1); braid.sleep(100) end,
      function() braid.sleep(1); error(err) end,
      function() local c <close> = closer(closed, 3); braid.sleep(100) end)
    assert.is_false(ok)
    assert.is_true(rawequal(err, e))
    assert.are.same({[1] = 1, [3] = 1}, closed)
    assert.is_true(braid.now() - t0 < 50)
  end))

  it("accepts tasks spawned elsewhere, awaits them and cancels them on failure", h.virtual(function()
    local done = braid.spawn(function() return "early" end)
    local slow = braid.spawn(function() braid.sleep(1) return "slow" end)
    braid.yield()
    assert.are.same({"early", "slow"}, {braid.gather(done, slow)})
    local victim = braid.spawn(function() braid.sleep(100) end)
    local ok, e = pcall(braid.gather, victim, function() error("boom", 0) end)
    assert.are.equal("boom", e)
    assert.are.equal("cancelled", victim:status())
  end))

  it("runs at most `limit` children at once", h.virtual(function()
    local running, peak = 0, 0
    local function job(i)
      return function()
        running = running + 1
        peak = math.max(peak, running)
        braid.sleep(1)
        running = running - 1
        return i
      end
    end
    local fns = {}
    for i = 1, 10 do fns[i] = job(i) end
    fns[#fns + 1] = {limit = 3}
    local r = {braid.gather(table.unpack(fns))}
    assert.are.same({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, r)
    assert.are.equal(3, peak)
  end))

  it("raises a timeout error at the deadline and cancels unfinished children", h.virtual(function()
    local closed = {}
    local t0 = braid.now()
    local ok, e = pcall(braid.gather,
      function() return 1 end,
      function() local c <close> = closer(closed, "slow"); braid.sleep(10) end,
      {timeout = 2})
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
    assert.are.equal(1, closed.slow)
    assert.are.equal(2, braid.now() - t0)
  end))

  it("lets a child that ends exactly at the deadline keep its result", h.virtual(function()
    local a, b = braid.gather(
      function() braid.sleep(2) return "on time" end,
      function() return "fast" end,
      {timeout = 2})
    assert.are.same({"on time", "fast"}, {a, b})
  end))

  it("collects outcomes in settle mode without cancelling siblings", h.virtual(function()
    local err = {}
    local r = {braid.gather(
      function() braid.sleep(1) return 1, 2 end,
      function() error(err) end,
      function() braid.sleep(5) return "late" end,
      function() braid.sleep(50) end,
      {settle = true, timeout = 10})}
    assert.are.same({ok = true, value = 1, n = 2, 1, 2}, r[1])
    assert.is_false(r[2].ok)
    assert.is_true(rawequal(err, r[2].error))
    assert.are.same({ok = true, value = "late", n = 1, "late"}, r[3])
    assert.is_false(r[4].ok)
    assert.is_true(braid.is_timeout(r[4].error))
  end))

  it("still raises the cancellation in settle mode when the gather's own task is cancelled", h.virtual(function()
    local closed = {}
    local t = braid.spawn(function()
      return braid.gather(function() local c <close> = closer(closed, 1); braid.sleep(100) end,
                          {settle = true})
    end)
    braid.sleep(1)
    t:cancel("stop")
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("stop", e.reason)
    assert.are.equal(1, closed[1])
  end))

  it("cancels its children when its caller is cancelled, and raises the cancellation", h.virtual(function()
    local closed = {}
    local t = braid.spawn(function()
      braid.gather(function() local c <close> = closer(closed, "a"); braid.sleep(100) end,
                   function() local c <close> = closer(closed, "b"); braid.sleep(100) end)
    end)
    braid.sleep(1)
    assert.is_true(t:cancel())
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("cancelled", t:status())
    assert.are.same({a = 1, b = 1}, closed)
  end))

  it("counts a child cancelled from outside as failed with its cancellation", h.virtual(function()
    local victim = braid.spawn(function() braid.sleep(100) end)
    braid.spawn(function() braid.sleep(1); victim:cancel("outside") end)
    local ok, e = pcall(braid.gather, victim, function() braid.sleep(10) end)
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("outside", e.reason)
  end))

  it("keeps errors raised while siblings were cancelled on the first error's suppressed list", h.virtual(function()
    local first = braid.Error.new{kind = "io", message = "first"}
    local ok, e = pcall(braid.gather,
      function() braid.sleep(1); error(first) end,
      function()
        local ok = pcall(braid.sleep, 100)
        error("cleanup failed", 0)
      end)
    assert.is_true(rawequal(first, e))
    assert.are.same({"cleanup failed"}, e.suppressed)
  end))

  it("handles 100k children in one gather", h.run(function()
    local fns = {}
    for i = 1, 100000 do fns[i] = function() return i end end
    local r = table.pack(braid.gather(table.unpack(fns)))
    assert.are.equal(100000, r.n)
    assert.are.equal(100000, r[100000])
    assert.are.equal(4242, r[4242])
  end))

  it("rejects bad members and options with usage errors", h.run(function()
    local ok, e = pcall(braid.gather, 42)
    assert.are.equal("usage", e.kind)
    assert.matches("bad argument #1 to 'braid.gather'", e.message, 1, true)
    ok, e = pcall(braid.gather, function() end, {limit = 0})
    assert.are.equal("usage", e.kind)
    ok, e = pcall(braid.gather, function() end, {timout = 1})
    assert.matches("unknown option 'timout'", e.message)
  end))
end)

describe("braid.race", function()
  it("returns the results of the first child to end and cancels the rest", h.virtual(function()
    local closed = {}
    local a, b = braid.race(
      function() local c <close> = closer(closed, 1); braid.sleep(5) return "slow" end,
      function() braid.sleep(1) return "fast", 2 end)
    assert.are.same({"fast", 2}, {a, b})
    assert.are.equal(1, closed[1])
  end))

  it("raises the error of the first child to end", h.virtual(function()
    local ok, e = pcall(braid.race,
      function() braid.sleep(5) return "slow" end,
      function() braid.sleep(1) error("first", 0) end)
    assert.are.equal("first", e)
  end))
end)

describe("braid.any", function()
  it("returns the first success and cancels the rest", h.virtual(function()
    local r = braid.any(
      function() error("nope", 0) end,
      function() braid.sleep(2) return "second" end,
      function() braid.sleep(9) return "third" end)
    assert.are.equal("second", r)
  end))

  it("raises all_failed with every error in order when all fail", h.virtual(function()
    local ok, e = pcall(braid.any,
      function() braid.sleep(2) error("a", 0) end,
      function() error("b", 0) end)
    assert.are.equal("all_failed", e.kind)
    assert.are.same({"a", "b", n = 2}, e.errors)
    ok, e = pcall(braid.any)
    assert.are.equal("all_failed", e.kind)
    assert.are.same({n = 0}, e.errors)
  end))

  -- review "prims" 11: error() raises nil, which left a hole that # could
  -- not count past; errors.n (as table.pack) says how many there were
  it("counts the members in errors.n, past a member that raised nil", h.virtual(function()
    local ok, e = pcall(braid.any,
      function() error("a", 0) end,
      function() error() end,
      function() braid.sleep(1) error("c", 0) end)
    assert.are.equal("all_failed", e.kind)
    assert.are.equal(3, e.errors.n)
    assert.are.equal("a", e.errors[1])
    assert.is_nil(e.errors[2])
    assert.are.equal("c", e.errors[3])
  end))
end)

describe("braid.map", function()
  it("calls fn(item, i) for every item and returns results in order", h.virtual(function()
    local r = braid.map({"a", "bb", "ccc"}, function(s, i) braid.sleep(4 - i) return #s * 10 + i end)
    assert.are.same({11, 22, 33, n = 3}, r)
  end))

  it("honours limit, settle and timeout", h.virtual(function()
    local running, peak = 0, 0
    local r = braid.map({1, 2, 3, 4, 5}, function(x)
      running = running + 1; peak = math.max(peak, running)
      braid.sleep(x)
      running = running - 1
      if x == 2 then error("two", 0) end
      return x
    end, {limit = 2, settle = true, timeout = 5.5})
    assert.are.equal(2, peak)
    assert.is_true(r[1].ok)
    assert.are.equal("two", r[2].error)
    assert.is_true(r[3].ok)
    assert.is_true(braid.is_timeout(r[5].error))
    assert.are.equal("braid.map timed out after 5.5 s (2 of 5 unfinished)", r[5].error.message)
  end))
end)

describe("groups given a task that has already ended", function()
  local function ended_tasks()
    local cancelled = braid.spawn(function() braid.sleep(100) end)
    braid.sleep(0.001)
    cancelled:cancel("r")
    local failed
    pcall(braid.scope, function() failed = braid.spawn(function() error("boom", 0) end) end)
    braid.sleep(0.01)
    assert.are.equal("cancelled", cancelled:status())
    assert.are.equal("failed", failed:status())
    return cancelled, failed
  end

  it("cancel the tasks given after it once it decided, and do not wait for them", h.run(function()
    local done = braid.spawn(function() return "early" end)
    local cancelled = braid.spawn(function() braid.sleep(100) end)
    braid.sleep(0.01)
    cancelled:cancel("r")
    braid.sleep(0.01)
    local function long() return braid.spawn(function() braid.sleep(100) end) end
    local t0 = braid.now()
    local l1, l2, l3 = long(), long(), long()
    assert.are.equal("early", braid.race(done, l1))
    assert.is_false(pcall(braid.gather, cancelled, l2))
    assert.are.equal("early", braid.any(done, l3))
    assert.is_true(braid.now() - t0 < 5)
    for _, t in ipairs({l1, l2, l3}) do assert.are.equal("cancelled", t:status()) end
  end))

  it("raise its own error or cancellation, as task:await() does", h.virtual(function()
    local cancelled, failed = ended_tasks()
    local function check(t, ok, e)
      local ok2, e2 = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_false(ok2)
      if type(e2) == "string" then assert.are.equal(e2, e)
      else
        assert.is_true(braid.is_cancelled(e))
        assert.are.equal(e2.reason, e.reason)
      end
    end
    for _, t in ipairs{cancelled, failed} do
      check(t, pcall(braid.gather, t))
      check(t, pcall(braid.race, t))
      check(t, pcall(braid.gather, t, function() braid.sleep(10) end))
      check(t, pcall(braid.race, function() braid.sleep(10) end, t))
      local ok, e = pcall(braid.any, t)
      assert.are.equal("all_failed", e.kind)
      check(t, false, e.errors[1])
      local r = braid.gather(t, function() return 2 end, {settle = true})
      assert.is_false(r.ok)
      check(t, false, r.error)
    end
    local okt = braid.spawn(function() return "fine" end)
    braid.yield()
    assert.are.equal("fine", braid.any(failed, cancelled, okt))
    assert.are.equal("fine", braid.race(okt, failed))
  end))
end)

describe("braid.map's memory", function()
  it("stays O(limit) plus the results with a limit", h.run(function()
    local items = {}
    for i = 1, 20000 do items[i] = i end
    collectgarbage() collectgarbage()
    local before, peak = collectgarbage("count"), 0
    local r = braid.map(items, function(x)
      if x % 1000 == 0 then
        collectgarbage() collectgarbage()
        peak = math.max(peak, collectgarbage("count") - before)
      end
      braid.yield()
      return x
    end, {limit = 4})
    assert.are.equal(20000, r.n)
    assert.are.equal(20000, r[20000])
    -- 20k task objects are ~6 MB; the results (a 20k array) are 320 KB
    assert.is_true(peak < 1500, "grew by " .. peak .. " KB")
  end))

  it("returns more results than a Lua stack holds (1M)", h.run(function()
    local items = {}
    for i = 1, 1100000 do items[i] = i end
    local r = braid.map(items, function(x) return x end, {limit = 100})
    assert.are.equal(1100000, r.n)
    assert.are.equal(1100000, r[1100000])
  end))

  it("reads the list raw, as it reads it from the scheduler", h.virtual(function()
    local proxy = setmetatable({}, {__len = function() return 3 end,
                                    __index = function(_, i) return i * 10 end})
    assert.are.same({n = 0}, braid.map(proxy, function(x) return x end))
    assert.are.same({10, 20, n = 2}, braid.map({10, 20}, function(x) return x end))
  end))
end)

describe("group options", function()
  it("accept settle only for gather and map", h.virtual(function()
    for _, f in ipairs{braid.race, braid.any} do
      local ok, e = pcall(f, function() braid.sleep(1) end, {settle = true, timeout = 0.05})
      assert.are.equal("usage", e.kind)
      assert.matches("unknown option 'settle'", e.message)
    end
    local ok, e = pcall(braid.race, function() braid.sleep(1) end, {timeout = 0.05})
    assert.is_true(braid.is_timeout(e))
  end))

  it("take a limit as Lua's integer arguments: an integer, 2.0 or \"2\"", h.virtual(function()
    local r = braid.map({1, 2, 3}, function(x) return x end, {limit = 2.0})
    assert.are.same({1, 2, 3, n = 3}, r)
    r = braid.map({1, 2, 3}, function(x) return x end, {limit = "2"})
    assert.are.same({1, 2, 3, n = 3}, r)
    for _, bad in ipairs{1.5, 0, -1, 0/0, math.huge, "2.5", "x"} do
      local ok, e = pcall(braid.map, {1}, print, {limit = bad})
      assert.are.equal("usage", e.kind)
      assert.matches("positive integer expected", e.message)
    end
  end))
end)

describe("braid.timeout", function()
  it("accepts a callable table as gather, map and spawn do", h.virtual(function()
    local callable = setmetatable({}, {__call = function(_, a) return a + 1 end})
    assert.are.equal(2, braid.timeout(1, callable, 1))
  end))
end)

-- review-lua 8: a table with a metatable was refused with "options table
-- expected", though it is a table: API.md "Options" says what is meant
describe("an options table with a metatable", function()
  it("is refused as not a plain table", h.virtual(function()
    local mt = setmetatable({limit = 2}, {})
    for _, call in ipairs({
      function() return braid.map({1}, print, mt) end,
      function() return braid.scope(print, mt) end,
    }) do
      local ok, e = pcall(call)
      assert.is_false(ok)
      assert.matches("(options table expected: a plain table without a metatable, " ..
                     "got a table with a metatable)", e.message, 1, true)
    end
    local ok, e = pcall(braid.scope, print, 5)
    assert.is_false(ok)
    assert.matches("options table expected: a plain table without a metatable, got number",
                   e.message, 1, true)
  end))

  -- gather, race and any take a trailing table with a metatable as a
  -- member: a callable one runs (as braid.spawn runs it), any other is
  -- refused, saying that options are a plain table
  it("is a member of gather, race and any: run when callable, else refused saying so", h.virtual(function()
    for _, f in ipairs({braid.gather, braid.race, braid.any}) do
      local name = f == braid.gather and "braid.gather" or f == braid.race and "braid.race" or "braid.any"
      local ok, e = pcall(f, function() braid.sleep(1) end, setmetatable({timeout = 0.1}, {}))
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      assert.matches("bad argument #2 to '" .. name .. "' (function or task expected, got a " ..
                     "table with a metatable: options are a plain table without one)", e.message, 1, true)
      local callable = setmetatable({}, {__call = function() return "called" end})
      assert.are.equal("called", select(-1, f(function() braid.sleep(1) return "f" end, callable)))
      ok, e = pcall(f, function() end, 5, {})
      assert.matches("bad argument #2 to '" .. name .. "' (function or task expected, got number)",
                     e.message, 1, true)
    end
  end))
end)

describe("the progress option", function()
  it("is true, false or a label: anything else is a usage error naming the function", h.virtual(function()
    for _, case in ipairs({
      {braid.gather, "braid.gather"}, {braid.race, "braid.race"}, {braid.any, "braid.any"},
    }) do
      for _, bad in ipairs({{3, "3"}, {{}, "table"}}) do
        local ok, e = pcall(case[1], function() end, {progress = bad[1]})
        assert.is_false(ok)
        assert.are.equal("usage", e.kind)
        assert.matches("bad option 'progress' to '" .. case[2] .. "' (boolean or label string " ..
                       "expected, got " .. bad[2] .. ")", e.message, 1, true)
      end
    end
    local ok, e = pcall(braid.map, {1}, print, {progress = 3})
    assert.matches("bad option 'progress' to 'braid.map' (boolean or label string expected, got 3)",
                   e.message, 1, true)
    assert.are.equal(1, braid.gather(function() return 1 end, {progress = false}))
  end))
end)
