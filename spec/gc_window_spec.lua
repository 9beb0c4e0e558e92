-- Lua runs finalizers (__gc) at allocation points: one that runs inside a
-- braid call, between its checks and its wait, must not make the call act
-- on what it saw before (review of 2026-12-02). And a waiter that leaves a
-- braid.condition by abandonment must not keep a notification.
local braid = require "braid"
local h = require "helper"

describe("a finalizer run inside a braid call", function()
  it("that sends on a channel makes a waiting select take the value (FIFO kept)", h.run(function()
    collectgarbage("incremental", 1, 1000)   -- a collector step at nearly every allocation
    local ch = braid.channel(10)
    local armed = false
    local mt = {__gc = function()
      if armed then armed = false; ch:send("first") end
    end}
    local cases = {{ch, "recv"}}
    for round = 1, 300 do
      local t = braid.spawn(function()
        for _ = 1, 1 + round % 37 do setmetatable({}, mt) end
        armed = true
        return braid.select(cases)
      end)
      braid.yield()
      armed = false
      assert.is_false(t:status() == "suspended" and ch:len() > 0,
        "round " .. round .. ": select waits while the channel holds a value")
      if not t:done() then t:cancel() end
      pcall(t.await, t)
      while ch:len() > 0 do ch:recv() end
    end
    collectgarbage("incremental", 200, 100)
  end))

  it("that takes the last permit keeps semaphore:with from holding it twice", h.run(function()
    collectgarbage("incremental", 1, 1000)
    local sem = braid.semaphore(1)
    local armed, inside, negative = false, 0, 0
    local function releaser() sem:release() end
    -- takes the permit, and gives it back from a task of its own
    local mt = {__gc = function()
      if armed and pcall(sem.acquire, sem) then
        armed = false
        braid.spawn(releaser)
      end
    end}
    -- made once: an allocation per round would run the finalizers before
    -- with's own (the round's shape is what reaches the window)
    local function body() inside = sem:count() end
    for round = 1, 2000 do
      for _ = 1, 1 + round % 37 do setmetatable({}, mt) end
      armed = true
      pcall(sem.with, sem, body)
      armed = false
      if inside < 0 then negative = negative + 1 end
    end
    collectgarbage("incremental", 200, 100)
    assert.are.equal(0, negative, "rounds where with held the permit the finalizer took")
  end))
end)

describe("braid.condition", function()
  it("drops a waiter abandoned after its grace period: notify(1) wakes a live one", h.run(function()
    local cond, woke = braid.condition(), {}
    local holder = braid.spawn(function()
      braid.scope(function(s)
        s:spawn(function()
          braid.shield(function()
            cond.lock:acquire(); cond:wait(); woke[#woke + 1] = "T1"; cond.lock:release()
          end)
        end)
        braid.sleep(3600)
      end, {grace = 0})
    end)
    braid.sleep(0.01)
    local t2 = braid.spawn(function()
      cond.lock:acquire(); cond:wait(); woke[#woke + 1] = "T2"; cond.lock:release()
    end)
    braid.sleep(0.01)
    holder:cancel()
    pcall(holder.await, holder)
    cond.lock:acquire()
    cond:notify(1)
    cond.lock:release()
    assert.is_true(braid.move_on(2, t2.await, t2) ~= nil or t2:status() == "ok",
      "the live waiter never woke: " .. t2:status())
    assert.same({"T2"}, woke)
  end))
end)
