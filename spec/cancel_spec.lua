local braid = require "braid"
local h = require "helper"

local closer = h.closer

describe("task:cancel", function()
  it("undoes the pending sleep and raises a cancellation error with the reason", h.virtual(function()
    local t0 = braid.now()
    local t = braid.spawn(function() braid.sleep(100) end)
    braid.sleep(1)
    assert.is_true(t:cancel("enough"))
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("cancelled", e.kind)
    assert.are.equal("enough", e.reason)
    assert.are.equal("cancelled (enough)", tostring(e))
    assert.are.equal(1, braid.now() - t0)
  end))

  it("is level-triggered: a task that swallows it is cancelled again at its next await", h.virtual(function()
    local seen = 0
    local t = braid.spawn(function()
      for _ = 1, 3 do
        local ok, e = pcall(braid.sleep, 100)
        if braid.is_cancelled(e) then seen = seen + 1 end
      end
      return "gave up"
    end)
    braid.sleep(1)
    t:cancel()
    assert.are.equal("gave up", t:await())
    assert.are.equal(3, seen)
  end))

  it("cancelling twice is the same as once", h.virtual(function()
    local t = braid.spawn(function() braid.sleep(10) end)
    braid.yield()
    assert.is_true(t:cancel("one"))
    assert.is_true(t:cancel("two"))
    local _, e = pcall(t.await, t)
    assert.are.equal("one", e.reason)
  end))

  it("starts a task spawned into a cancelled scope and cancels it at its first await", h.virtual(function()
    local log = {}
    braid.scope(function(s)
      s:cancel()
      s:spawn(function()
        log[#log + 1] = "started"
        local ok, e = pcall(braid.sleep, 1)
        log[#log + 1] = braid.is_cancelled(e) and "cancelled" or "slept"
      end)
    end)
    assert.are.same({"started", "cancelled"}, log)
  end))

  it("lets a shielded cleanup await", h.virtual(function()
    local log = {}
    local t = braid.spawn(function()
      local ok, e = pcall(braid.sleep, 100)
      braid.shield(function()
        braid.sleep(2)
        log[#log + 1] = "flushed"
      end)
      log[#log + 1] = "after shield"
      braid.sleep(1)      -- cancelled again: we are still in the cancelled task
      log[#log + 1] = "unreachable"
    end)
    braid.sleep(1)
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    assert.are.same({"flushed", "after shield"}, log)
  end))

  it("keeps deadlines set inside a shield", h.virtual(function()
    local t = braid.spawn(function()
      pcall(braid.sleep, 100)
      return braid.shield(function()
        local ok, e = pcall(braid.timeout, 1, braid.sleep, 50)
        return braid.is_timeout(e)
      end)
    end)
    braid.yield()
    t:cancel()
    assert.is_true(t:await())
  end))

  it("abandons a member that outlives the grace period, running its <close> once", h.virtual(function()
    local closed = {}
    local t0 = braid.now()
    braid.scope(function(s)
      s:spawn(function()
        local c <close> = closer(closed, "stubborn")
        pcall(braid.sleep, 100)
        braid.shield(function() braid.sleep(1000) end)
      end)
      braid.sleep(1)
      s:cancel()
    end, {grace = 3})
    assert.are.equal(1, closed.stubborn)
    assert.are.equal(4, braid.now() - t0)
  end))

  -- the grace timer started at the cancel only if the scope had members
  -- then: one spawned into it afterwards, waiting shielded, was never
  -- abandoned
  it("abandons a member spawned into the scope after its cancel", h.virtual(function()
    local t0 = braid.now()
    braid.scope(function(s)
      s:cancel()
      s:spawn(function() braid.shield(braid.sleep, 100) end)
    end, {grace = 0.5})
    assert.are.equal(0.5, braid.now() - t0)
  end))

  it("runs <close> variables exactly once on return, error and cancellation", h.virtual(function()
    local closed = {}
    local ok = braid.spawn(function() local c <close> = closer(closed, "ret") end)
    local cancelled = braid.spawn(function() local c <close> = closer(closed, "can"); braid.sleep(9) end)
    ok:await()
    pcall(braid.scope, function(s)
      s:spawn(function() local c <close> = closer(closed, "err"); error("x") end)
    end)
    braid.yield()
    cancelled:cancel()
    pcall(cancelled.await, cancelled)
    assert.are.same({ret = 1, err = 1, can = 1}, closed)
  end))
end)

describe("braid.scope", function()
  it("returns the body's results once the body and every member have ended", h.virtual(function()
    local log = {}
    local a, b = braid.scope(function(s)
      s:spawn(function() braid.sleep(2) log[#log + 1] = "member" end)
      braid.spawn(function() braid.sleep(1) log[#log + 1] = "spawned" end)
      return "x", "y"
    end)
    assert.are.same({"x", "y"}, {a, b})
    assert.are.same({"spawned", "member"}, log)
  end))

  it("fails fast: a member's error cancels the body and the others, then is raised unchanged", h.virtual(function()
    local err, closed = {}, {}
    local ok, e = pcall(braid.scope, function(s)
      s:spawn(function() local c <close> = closer(closed, "m"); braid.sleep(50) end)
      s:spawn(function() braid.sleep(1); error(err) end)
      local c <close> = closer(closed, "body")
      braid.sleep(50)
    end)
    assert.is_true(rawequal(err, e))
    assert.are.same({m = 1, body = 1}, closed)
  end))

  it("does not fail when a member ends cancelled", h.virtual(function()
    local r = braid.scope(function(s)
      local t = s:spawn(function() braid.sleep(50) end)
      braid.yield()
      t:cancel()
      return "fine"
    end)
    assert.are.equal("fine", r)
  end))

  it("returns nil without raising after scope:cancel", h.virtual(function()
    local closed = {}
    local r = table.pack(braid.scope(function(s)
      s:spawn(function() local c <close> = closer(closed, 1); braid.sleep(50) end)
      braid.sleep(1)
      s:cancel("done")
      braid.sleep(50)
      return "unreachable"
    end))
    assert.are.equal(1, r.n)
    assert.is_nil(r[1])
    assert.are.equal(1, closed[1])
  end))

  it("refuses a scope handle used after the scope ended", h.run(function()
    local kept
    braid.scope(function(s) kept = s end)
    local ok, e = pcall(kept.spawn, kept, function() end)
    assert.are.equal("usage", e.kind)
    assert.matches("scope has ended", e.message)
  end))

  it("makes the root task a scope: it ends only after children it did not await", function()
    local log = {}
    braid.run(function()
      braid.spawn(function() braid.sleep(0.01) log[#log + 1] = "child" end)
      log[#log + 1] = "root body"
    end)
    assert.are.same({"root body", "child"}, log)
  end)

  it("fails braid.run with a child's error when the root did not await it", function()
    local err = {}
    local ok, e = pcall(braid.run, function()
      braid.spawn(function() error(err) end)
      braid.sleep(10)
    end)
    assert.is_true(rawequal(err, e))
  end)
end)

describe("deadlock detection", function()
  it("raises a deadlock error naming what waits instead of hanging", function()
    local ok, e = pcall(braid.run, function()
      local root = braid.current()
      local t = braid.spawn(function() root:await() end)
      t.name = "waiter"
      t:await()
    end)
    assert.is_false(ok)
    assert.are.equal("deadlock", e.kind)
    assert.matches("waiter", e.message)
    assert.matches("waits on await", e.message)
  end)

  -- the engine fails the deadlocked task's own scope, and what its body
  -- caught read "cancelled (a sibling failed)": it has no sibling
  it("tells a body that catches it that a deadlock cancelled it", function()
    local caught
    local ok, e = pcall(braid.run, function()
      local _, err = pcall(braid.event().wait, braid.event())
      caught = err
    end)
    assert.is_false(ok)
    assert.are.equal("deadlock", e.kind)
    assert.are.equal("cancelled", caught.kind)
    assert.are.equal("cancelled (deadlock: every task was waiting)", caught.message)
  end)

  -- a never-firing timer kept the loop alive: a silent hang on the real
  -- clock (the virtual clock already reported these)
  it("counts a deadline or sleep of math.huge as nothing that can wake a task", function()
    local function deadlock(body)
      local ok, e = pcall(braid.run, body)
      assert.is_false(ok, "no deadlock reported")
      assert.are.equal("deadlock", e.kind, tostring(e))
      return e.message
    end
    assert.matches("waits on event wait", deadlock(function()
      braid.timeout(math.huge, function() braid.event():wait() end)
    end))
    assert.matches("waits on sleep", deadlock(function() braid.sleep(math.huge) end))
    assert.matches("waits on sleep", deadlock(function()
      braid.move_on(1e300, braid.sleep, 1e300)
    end))
    -- "never" starts where the docs say, ~292 years (BRAID_NEVER ns)
    assert.matches("waits on sleep", deadlock(function() braid.sleep(9.3e9) end))
    local ok, e = pcall(braid.run, function() braid.timeout(0.01, braid.sleep, 9.1e9) end)
    assert.is_false(ok)
    assert.are.equal("timeout", e.kind, tostring(e))
    -- a real timer still wakes it, and a "never" among others is harmless
    assert.are.equal(7, braid.run(function()
      braid.spawn(function() braid.sleep(math.huge) end):cancel()
      return braid.timeout(math.huge, function() braid.sleep(0.01) return 7 end)
    end))
  end)

end)

describe("abandonment", function()
  -- the abandoned task's scope went while the child still pointed at it
  it("refuses a spawn from a <close> handler of a task being abandoned", h.run(function()
    local child_ran = false
    local ok = pcall(braid.scope, function(s)
      s:spawn(function()
        local x <close> = setmetatable({}, {__close = function()
          braid.spawn(function() child_ran = true end)
        end})
        braid.shield(braid.sleep, 10)
      end)
      braid.sleep(0.05)
      s:cancel()
    end, {grace = 0.05})
    assert.is_true(ok)
    braid.sleep(0.1)
    collectgarbage()
    assert.is_false(child_ran, "a child of an abandoned task ran after its scope ended")
  end))

  it("ends the braid.scope handles of a task it abandons", h.run(function()
    local saved
    pcall(braid.scope, function(outer)
      outer:spawn(function()
        braid.scope(function(s) saved = s; braid.shield(braid.sleep, 10) end)
      end)
      braid.sleep(0.05)
      outer:cancel()
    end, {grace = 0.05})
    collectgarbage()
    collectgarbage()
    local ok, e = pcall(saved.spawn, saved, function() return 1 end)
    assert.is_false(ok)
    assert.matches("scope:spawn: the scope has ended", tostring(e), 1, true)
  end))
end)

