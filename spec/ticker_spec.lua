-- spec/ticker_spec.lua (issue 19): braid.ticker, braid.sleep_until,
-- braid.move_on, braid.clock, braid.pid.
local braid = require "braid"
local h = require "helper"

describe("braid.ticker", function()
  it("ticks every period, counted from when it was made", h.virtual(function()
    local t0 = braid.now()
    local tk <close> = braid.ticker(2)
    local seen = {}
    for n, missed in tk do
      seen[#seen + 1] = {n, missed, braid.now() - t0}
      if n == 3 then break end
    end
    assert.are.same({{1, 0, 2}, {2, 0, 4}, {3, 0, 6}}, seen)
  end))

  it("does not drift when the loop body takes part of a period",
     h.virtual(function()
    local t0 = braid.now()
    local tk <close> = braid.ticker(1)
    for n in tk do
      braid.sleep(0.7)            -- work inside the loop
      if n == 10 then break end
    end
    -- tick 10 at 10 s, plus the last body: 10.7 s, not 10 * 1.7 s
    assert.are.equal(10.7, math.floor((braid.now() - t0) * 10 + 0.5) / 10)
  end))

  it("skips the ticks a late waiter missed and says how many",
     h.virtual(function()
    local tk <close> = braid.ticker(1)
    assert.are.same({1, 0}, {tk:wait()})
    braid.sleep(3.5)              -- ticks 2, 3 and 4 pass meanwhile
    assert.are.same({4, 2}, {tk:wait()})
    assert.are.same({5, 0}, {tk:wait()})
  end))

  it("returns a due tick without waiting", h.virtual(function()
    local tk <close> = braid.ticker(1)
    braid.sleep(1)
    local t0 = braid.now()
    assert.are.same({1, 0}, {tk:wait()})
    assert.are.equal(t0, braid.now())
  end))

  it("ends (nil) once closed, also for a task waiting on it",
     h.virtual(function()
    local tk = braid.ticker(10)
    local waiter = braid.spawn(function() return tk:wait() end)
    braid.sleep(1)
    tk:close()
    assert.is_nil(waiter:await())
    assert.is_nil(tk:wait())
    tk:close()                    -- twice is harmless
  end))

  it("is closed with the scope that made it", h.virtual(function()
    local tk
    braid.scope(function() tk = braid.ticker(1) end)
    assert.is_nil(tk:wait())
    assert.matches("closed", tostring(tk))
  end))

  it("is cancellable, and a cancelled wait leaves the ticker usable",
     h.virtual(function()
    local tk <close> = braid.ticker(5)
    local ok, e = pcall(braid.timeout, 1, tk.wait, tk)
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
    assert.are.same({1, 0}, {tk:wait()})   -- at 5 s, as planned
  end))

  it("refuses a period that is not positive", h.run(function()
    for _, p in ipairs({0, -1, 0 / 0, math.huge}) do
      local ok, e = pcall(braid.ticker, p)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
    end
  end))

  -- Under load the first wait may come late and get tick 2 or more (the
  -- newest due, the ones before it missed): what holds is that the tick
  -- returned was due by then, and that the ones skipped are counted.
  it("ticks on the real clock too", h.run(function()
    local t0 = braid.now()
    local tk <close> = braid.ticker(0.01)
    local last = 0
    for _ = 1, 3 do
      local n, missed = tk:wait()
      local elapsed = braid.now() - t0
      assert.is_true(n > last, "ticks go forward")
      assert.are.equal(n - last - 1, missed)
      assert.is_true(elapsed >= n * 0.01 - 1e-6,
                     ("tick %d returned after %.4f s"):format(n, elapsed))
      last = n
    end
  end))
end)

describe("braid.sleep_until", function()
  it("wakes when braid.now() reaches the time", h.virtual(function()
    local t = braid.now() + 12.5
    braid.sleep_until(t)
    assert.are.equal(t, braid.now())
  end))

  it("returns at once for a time that has passed", h.virtual(function()
    local t0 = braid.now()
    braid.sleep_until(t0 - 5)
    assert.are.equal(t0, braid.now())
  end))

  it("has reached the time on the real clock", h.run(function()
    local t = braid.now() + 0.02
    braid.sleep_until(t)
    assert.is_true(braid.now() >= t)
  end))
end)

describe("braid.move_on", function()
  it("returns true and fn's results when fn finishes", h.virtual(function()
    assert.are.same({n = 4, true, "a", nil, "c"},
                    table.pack(braid.move_on(5, function(x)
                      braid.sleep(1)
                      return x, nil, "c"
                    end, "a")))
  end))

  it("returns false when the deadline cuts fn short", h.virtual(function()
    local t0, cleaned = braid.now(), false
    local r = table.pack(braid.move_on(2, function()
      local _ <close> = setmetatable({}, {__close = function() cleaned = true end})
      braid.sleep(100)
    end))
    assert.are.same({n = 1, false}, r)
    assert.is_true(cleaned)
    assert.are.equal(2, braid.now() - t0)
  end))

  it("raises fn's errors, an inner timeout's included", h.virtual(function()
    local ok, e = pcall(braid.move_on, 5, error, "boom", 0)
    assert.are.same({false, "boom"}, {ok, e})
    ok, e = pcall(braid.move_on, 5, function()
      braid.timeout(1, braid.sleep, 10)
    end)
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
  end))

  it("is cut short by an outer deadline as a cancellation",
     h.virtual(function()
    local ok, e = pcall(braid.timeout, 1, braid.move_on, 5, braid.sleep, 10)
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
    assert.matches("after 1 s", e.message)
  end))

  it("raises usage errors naming itself", h.run(function()
    local ok, e = pcall(braid.move_on, "x", function() end)
    assert.are.equal("usage", e.kind)
    assert.matches("braid.move_on", e.message)
  end))
end)

describe("braid.clock and braid.pid", function()
  it("give the wall-clock time with sub-second precision", h.virtual(function()
    local c = braid.clock()
    assert.is_true(math.abs(c - os.time()) < 2)
    assert.are.equal("float", math.type(c))
  end))

  it("give braid's process id", h.run(function()
    local f = io.open("/proc/self/stat")
    local pid = tonumber(f:read("a"):match("^(%d+)"))
    f:close()
    assert.are.equal(pid, braid.pid())
  end))
end)
