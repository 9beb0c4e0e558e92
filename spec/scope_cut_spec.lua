local braid = require "braid"
local h = require "helper"

-- A scope whose cancellation cut members off (they ended cancelled) did not
-- do its work: it raises that cancellation once they have ended, as
-- gather does, rather than return the body's results (review of
-- 2026-12-02, "prims" 2: braid.timeout(s, braid.scope, fn) returned true
-- with every child cut off; Ctrl-C during a scope's join ran the code after
-- it).
describe("a scope whose cancellation cut members off", function()
  local function sleeper(log)
    return function()
      local c <close> = setmetatable({}, {__close = function() log.closed = (log.closed or 0) + 1 end})
      braid.sleep(100)
      log.done = (log.done or 0) + 1
    end
  end

  it("raises the timeout when braid.timeout's deadline cut off a braid.scope's members", h.virtual(function()
    local log = {}
    local t0 = braid.now()
    local ok, e = pcall(braid.timeout, 1, braid.scope, function(s)
      s:spawn(sleeper(log))
      s:spawn(sleeper(log))
      return "all downloaded"
    end)
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
    assert.are.equal("timed out after 1 s", e.message)
    assert.are.equal(1, braid.now() - t0)
    assert.are.equal(2, log.closed)
    assert.is_nil(log.done)
  end))

  it("raises the timeout when the deadline cut off a task spawned inside braid.timeout", h.virtual(function()
    local log = {}
    local ok, e = pcall(braid.timeout, 1, function()
      braid.spawn(sleeper(log))
      return "all done"
    end)
    assert.is_true(braid.is_timeout(e))
    assert.are.equal(1, log.closed)
  end))

  it("makes braid.move_on answer false", h.virtual(function()
    local log = {}
    assert.are.same({false}, {braid.move_on(1, braid.scope, function(s)
      s:spawn(sleeper(log))
      return "all downloaded"
    end)})
    assert.are.same({false}, {braid.move_on(1, function()
      braid.spawn(sleeper(log))
      return "all done"
    end)})
    assert.are.equal(2, log.closed)
  end))

  it("raises a cancellation of its task that came while it joined, and the code after it does not run", h.virtual(function()
    local log, after = {}, false
    local t = braid.spawn(function()
      braid.scope(function(s)
        s:spawn(sleeper(log))
        return "body result"
      end)
      after = true
    end)
    braid.sleep(1)
    assert.are.equal("suspended", t:status())
    t:cancel("outside")
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("outside", e.reason)
    assert.are.equal("cancelled", t:status())
    assert.is_false(after)
    assert.are.equal(1, log.closed)
  end))

  it("raises the outer deadline's cancellation inside, and only the outer timeout raises the timeout", h.virtual(function()
    local inner
    local ok, e = pcall(braid.timeout, 1, function()
      local ok2, e2 = pcall(braid.scope, function(s)
        s:spawn(braid.sleep, 100)
      end)
      inner = e2
      error(e2, 0)
    end)
    assert.is_true(braid.is_cancelled(inner))
    assert.are.equal("cancelled (deadline passed)", inner.message)
    assert.is_true(braid.is_timeout(e))
  end))

  it("ends a task whose body returned cancelled when its cancel cut off its members", h.virtual(function()
    local log = {}
    local t = braid.spawn(function()
      braid.spawn(sleeper(log))
      return "r"
    end)
    braid.sleep(1)
    assert.are.equal("suspended", t:status())
    t:cancel("x")
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("x", e.reason)
    assert.are.equal("cancelled", t:status())
    assert.are.equal(1, log.closed)
    -- and a timeout around such a task raises its timeout
    ok, e = pcall(braid.timeout, 1, function()
      local t2 = braid.spawn(function() braid.spawn(sleeper(log)) return "r" end)
      return t2:await()
    end)
    assert.is_true(braid.is_timeout(e))
  end))

  it("returns the body's results when no member was cut off (members that caught it and finished)", h.virtual(function()
    local r = table.pack(braid.timeout(1, braid.scope, function(s)
      s:spawn(function()
        pcall(braid.sleep, 100)   -- catches the deadline's cancellation
        return "finished anyway"
      end)
      return "body", nil
    end))
    assert.are.same({n = 2, "body"}, r)
    -- a body that caught the deadline itself and returned: the result wins
    assert.are.equal("caught", braid.timeout(1, function()
      pcall(braid.sleep, 100)
      return "caught"
    end))
  end))

  it("still returns nil after its own scope:cancel, members cut off or not", h.virtual(function()
    local log = {}
    local r = table.pack(braid.scope(function(s)
      s:spawn(sleeper(log))
      braid.spawn(function() braid.sleep(1) s:cancel("enough") end)
      return "body"
    end))
    assert.are.same({n = 1}, r)
    assert.are.equal(1, log.closed)
  end))

  it("lets a member cancelled on its own (not by the scope) leave the results alone", h.virtual(function()
    local r = braid.scope(function(s)
      local t = s:spawn(braid.sleep, 50)
      braid.spawn(function() braid.sleep(1) t:cancel() end)
      return "fine"
    end)
    assert.are.equal("fine", r)
  end))
end)
