-- The anchors table of live tasks (engine/core/anchor.c): it grows with a
-- burst and, since a Lua table never shrinks, is rebuilt at the size of
-- the live tasks once they fill less than an eighth of it.
local braid = require "braid"
local h = require "helper"

local function settle()
  braid.sleep(0.001)   -- the scheduler goes idle at least once
  collectgarbage()
  collectgarbage()
  return collectgarbage("count")
end

describe("the anchors of live tasks", function()
  it("shrink back after a burst of 100k tasks has ended", h.run(function()
    braid.spawn(function() end):await()   -- the pool and tables exist
    local before = settle()
    local tasks = {}
    for i = 1, 100000 do tasks[i] = braid.spawn(function() return i end) end
    for i = 1, 100000 do assert(tasks[i]:await() == i) end
    tasks = nil
    local after = settle()
    -- 100k anchors are a 2 MB array; what stays is the coroutine pool
    -- (256 coroutines) and small change
    assert.is_true(after - before < 1024,
                   ("%.0f KB stayed after the burst"):format(after - before))
  end))

  it("keep the tasks still live when they are renumbered", h.run(function()
    local gate = braid.event()
    local long = {}
    for i = 1, 50 do
      long[i] = braid.spawn(function()
        gate:wait()
        return i, braid.current().id
      end)
      long[i].name = "long " .. i
    end
    local burst = {}
    for i = 1, 20000 do burst[i] = braid.spawn(function() return i end) end
    for i = 1, 20000 do assert(burst[i]:await() == i) end
    burst = nil
    settle()   -- 50 live of ~20000 slots: rebuilt
    for i = 1, 50, 7 do long[i]:cancel("not needed") end
    local more = {}
    for i = 1, 100 do more[i] = braid.spawn(function() return -i end) end
    gate:set()
    for i = 1, 50 do
      local t = long[i]
      assert.are.equal("long " .. i, t.name)
      if (i - 1) % 7 == 0 then
        local ok, e = pcall(t.await, t)
        assert.is_false(ok)
        assert.is_true(braid.is_cancelled(e))
        assert.are.equal("cancelled", t:status())
      else
        assert.are.same({i, t.id}, {t:await()})
        assert.are.equal("ok", t:status())
      end
    end
    for i = 1, 100 do assert.are.equal(-i, more[i]:await()) end
  end))
end)
