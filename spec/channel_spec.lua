local braid = require "braid"
local h = require "helper"

describe("braid.channel", function()
  it("buffers up to its capacity, then makes senders wait", h.virtual(function()
    local ch = braid.channel(2)
    local log = {}
    local sender = braid.spawn(function()
      for i = 1, 3 do ch:send(i); log[#log + 1] = "sent " .. i end
    end)
    braid.sleep(1)
    assert.are.same({"sent 1", "sent 2"}, log)
    assert.are.equal(2, ch:len())
    assert.are.same({1, true}, {ch:recv()})
    sender:await()
    assert.are.same({"sent 1", "sent 2", "sent 3"}, log)
    assert.are.same({2, true}, {ch:recv()})
    assert.are.same({3, true}, {ch:recv()})
  end))

  it("is a rendezvous with capacity 0: send waits for a receiver", h.virtual(function()
    local ch = braid.channel()
    local log = {}
    local t = braid.spawn(function() ch:send("x"); log[#log + 1] = "delivered" end)
    braid.sleep(5)
    assert.are.same({}, log)
    assert.are.same({"x", true}, {ch:recv()})
    t:await()
    assert.are.same({"delivered"}, log)
  end))

  -- recv keeps extra arguments below its results (it no longer trims the
  -- stack): each path must still return exactly the value and the flag.
  it("returns v, true whatever extra arguments recv is given", h.virtual(function()
    local ch = braid.channel(1)
    local extra = {}
    for i = 1, 40 do extra[i] = i end
    ch:send("buffered")
    assert.are.same({"buffered", true}, {ch:recv(table.unpack(extra))})
    braid.spawn(function() braid.sleep(1); ch:send("handed") end)
    assert.are.same({"handed", true}, {ch:recv(table.unpack(extra))})
    braid.spawn(function() braid.sleep(1); ch:close() end)
    assert.are.same({nil, false}, {ch:recv("x", "y")})
    local got = {}
    local c2 = braid.channel(3)
    c2:send(1); c2:send(2); c2:close()
    for v in c2:iter() do got[#got + 1] = v end
    assert.are.same({1, 2}, got)
  end))

  it("carries nil as a value", h.run(function()
    local ch = braid.channel(1)
    ch:send(nil)
    local v, ok = ch:recv()
    assert.is_nil(v)
    assert.is_true(ok)
  end))

  it("returns nil, false once closed and drained, and iter stops there", h.run(function()
    local ch = braid.channel(3)
    ch:send(1); ch:send(2); ch:close()
    local got = {}
    for v in ch:iter() do got[#got + 1] = v end
    assert.are.same({1, 2}, got)
    assert.are.same({nil, false}, {ch:recv()})
  end))

  it("raises kind closed when sending on a closed channel, also to waiting senders", h.virtual(function()
    local ch = braid.channel()
    local ok, e = pcall(braid.scope, function(s)
      s:spawn(function() ch:send("never") end)
      braid.sleep(1)
      ch:close()
    end)
    assert.are.equal("closed", e.kind)
    ok, e = pcall(ch.send, ch, 1)
    assert.are.equal("closed", e.kind)
    assert.are.same({nil, false}, {ch:recv()})
  end))

  it("wakes receivers when closed", h.virtual(function()
    local ch = braid.channel()
    local r = braid.spawn(function() return ch:recv() end)
    braid.sleep(1)
    ch:close()
    assert.are.same({nil, false}, {r:await()})
  end))

  it("serves waiting senders and receivers in FIFO order", h.virtual(function()
    local ch = braid.channel()
    local got = {}
    local rs = {}
    for i = 1, 5 do rs[i] = braid.spawn(function() local v = ch:recv(); got[#got + 1] = i .. ":" .. v end) end
    braid.sleep(1)
    for i = 1, 5 do ch:send(string.char(96 + i)) end
    for i = 1, 5 do rs[i]:await() end
    assert.are.same({"1:a", "2:b", "3:c", "4:d", "5:e"}, got)
    local order = {}
    for i = 1, 4 do braid.spawn(function() ch:send(i) end) end
    braid.sleep(1)
    for _ = 1, 4 do order[#order + 1] = ch:recv() end
    assert.are.same({1, 2, 3, 4}, order)
  end))

  it("never loses a value handed to a receiver cancelled in the same turn", h.virtual(function()
    local ch = braid.channel()
    local receiver = braid.spawn(function() return ch:recv() end)
    braid.sleep(1)
    ch:send("precious")            -- hand-off: the receiver is woken with it
    receiver:cancel()              -- same turn: the result wins
    assert.are.same({"precious", true}, {receiver:await()})
  end))

  it("takes back the value of a sender cancelled while waiting, leaving no trace", h.virtual(function()
    local ch = braid.channel()
    local s1 = braid.spawn(function() ch:send("withdrawn") end)
    local s2 = braid.spawn(function() ch:send("kept") end)
    braid.sleep(1)
    s1:cancel()
    local ok, e = pcall(s1.await, s1)
    assert.is_true(braid.is_cancelled(e))
    assert.are.same({"kept", true}, {ch:recv()})
    s2:await()
    assert.are.equal(0, ch:len())
  end))

  it("delivers a value to exactly one receiver under contention", h.virtual(function()
    local ch = braid.channel(4)
    local seen, total = {}, 0
    braid.scope(function(s)
      for w = 1, 4 do
        s:spawn(function()
          for v in ch:iter() do
            assert.is_nil(seen[v]); seen[v] = w; total = total + 1
            if v % 7 == 0 then braid.sleep(0.5) end
          end
        end)
      end
      for i = 1, 200 do ch:send(i) end
      ch:close()
    end)
    assert.are.equal(200, total)
  end))

  it("exchanges values with tasks suspended inside coroutines of the script's own", h.virtual(function()
    local ch = braid.channel()
    local producer = braid.spawn(function()
      local gen = coroutine.wrap(function()
        for i = 1, 3 do ch:send(i) end
        coroutine.yield("done")
      end)
      return gen()
    end)
    local got = {}
    local consume = coroutine.wrap(function()
      for _ = 1, 3 do
        local v = ch:recv()   -- taken from the waiting sender, or handed over
        got[#got + 1] = v
      end
      return "ok"
    end)
    braid.sleep(1)
    assert.are.equal("ok", consume())
    assert.are.same({1, 2, 3}, got)
    assert.are.equal("done", producer:await())
  end))

  it("rejects a negative capacity", h.run(function()
    local ok, e = pcall(braid.channel, -1)
    assert.are.equal("usage", e.kind)
  end))
end)

describe("braid.semaphore", function()
  it("limits holders and hands permits over in FIFO order", h.virtual(function()
    local sem = braid.semaphore(2)
    local holding, peak, order = 0, 0, {}
    braid.scope(function(s)
      for i = 1, 6 do
        s:spawn(function()
          sem:acquire()
          order[#order + 1] = i
          holding = holding + 1; peak = math.max(peak, holding)
          braid.sleep(1)
          holding = holding - 1
          sem:release()
        end)
      end
    end)
    assert.are.equal(2, peak)
    assert.are.same({1, 2, 3, 4, 5, 6}, order)
    assert.are.equal(2, sem:count())
  end))

  it("releases on error and on cancellation with :with", h.virtual(function()
    local sem = braid.semaphore(1)
    local ok, e = pcall(sem.with, sem, function() error("inside", 0) end)
    assert.are.equal("inside", e)
    assert.are.equal(1, sem:count())
    local t = braid.spawn(function() sem:with(braid.sleep, 100) end)
    braid.sleep(1)
    assert.are.equal(0, sem:count())
    t:cancel()
    pcall(t.await, t)
    assert.are.equal(1, sem:count())
  end))

  it("leaves no trace of a cancelled waiter", h.virtual(function()
    local sem = braid.semaphore(0, {max = 1})
    local a = braid.spawn(function() sem:acquire() return "a" end)
    local b = braid.spawn(function() sem:acquire() return "b" end)
    braid.sleep(1)
    a:cancel()
    pcall(a.await, a)
    sem:release()
    assert.are.equal("b", b:await())
    assert.are.equal(0, sem:count())
  end))
end)

-- Issue 13.10: what is handed to a waiting task that is then abandoned
-- before it runs again. Each waiter runs shielded in a task of a scope with
-- grace 0, so that cancelling the scope leaves it waiting; once all wait,
-- the scope is cancelled and hand_off() runs in the same turn while 20000
-- other tasks stay ready: the woken waiters queue behind them, past the end
-- of the scheduler's turn (it resumes at most 20000 tasks a turn), and the
-- grace period abandons them first. `meanwhile`, if given, runs in the
-- same turn, in a task that is ahead of the woken waiters in the ready
-- queue: it may start waiting before they are abandoned. Returns how many
-- waiters ran on.
local function abandon_after(waiters, hand_off, meanwhile)
  local stop, ran = false, 0
  braid.scope(function(busy)
    for _ = 1, 20000 do
      busy:spawn(function()
        while not stop do
          braid.yield()
          local f = meanwhile
          if f and stop == nil then meanwhile = nil; f() end
        end
      end)
    end
    local scope, tasks = nil, {}
    local holder = braid.spawn(function()
      braid.scope(function(s)
        scope = s
        for i, w in ipairs(waiters) do
          tasks[i] = s:spawn(function() braid.shield(w); ran = ran + 1 end)
        end
        braid.sleep(3600)
      end, {grace = 0})
    end)
    local function all_wait()
      if #tasks < #waiters then return false end
      for _, t in ipairs(tasks) do
        if t:status() ~= "suspended" then return false end
      end
      return true
    end
    repeat braid.yield() until all_wait()
    scope:cancel()
    hand_off()
    stop = nil        -- the busy tasks still run, and one takes `meanwhile`
    holder:await()
    stop = true
  end)
  return ran
end

describe("a hand-off to a task abandoned before it runs (issue 13.10)", function()
  it("gives a received value back to the channel, where the next receiver gets it", h.run(function()
    local ch = braid.channel()
    local ran = abandon_after({function() ch:recv() end}, function()
      ch:send("v1")   -- handed over: the receiver is woken with it
    end)
    assert.are.equal(0, ran)
    assert.are.equal(1, ch:len())
    assert.are.same({"v1", true}, {ch:recv()})
    assert.are.equal(0, ch:len())
  end))

  it("gives values back in the order they left, ahead of buffered ones", h.run(function()
    local ch = braid.channel(1)
    local recv = function() ch:recv() end
    abandon_after({recv, recv}, function()
      ch:send("v1"); ch:send("v2"); ch:send("v3")   -- v3 is buffered
    end)
    assert.are.equal(3, ch:len())
    local got = {}
    for _ = 1, 3 do got[#got + 1] = ch:recv() end
    assert.are.same({"v1", "v2", "v3"}, got)
  end))

  -- a receiver waiting inside a coroutine of the script's own: the value
  -- sits on that coroutine, below what marks it suspended in a braid call
  it("gives back what was handed to a receiver inside a script's coroutine", h.run(function()
    local ch = braid.channel(1)
    local wrapped = function() coroutine.wrap(function() ch:recv() end)() end
    local selected = function()
      coroutine.wrap(function() braid.select{{ch, "recv"}} end)()
    end
    abandon_after({wrapped, selected}, function()
      ch:send("v1"); ch:send("v2"); ch:send("v3")
    end)
    local got = {}
    for _ = 1, 3 do got[#got + 1] = ch:recv() end
    assert.are.same({"v1", "v2", "v3"}, got)
  end))

  it("hands a given-back value to a receiver already waiting, a select too", h.run(function()
    local ch = braid.channel()
    local got, waited
    abandon_after({function() ch:recv() end}, function() ch:send("v1") end,
      function()
        waited = ch:len() == 0   -- v1 is with the doomed receiver
        got = {ch:recv()}
      end)
    assert.is_true(waited)
    assert.are.same({"v1", true}, got)
    local other = braid.channel(1)
    got = nil
    abandon_after({function() ch:recv() end}, function() ch:send("v2") end,
      function() got = {braid.select{{other, "recv"}, {ch, "recv"}}} end)
    assert.are.same({2, "v2", true}, got)
    other:send("o")   -- the select left other's queue: o is buffered
    assert.are.equal(1, other:len())
  end))

  it("counts a given-back value against the capacity", h.run(function()
    local ch = braid.channel(1)
    abandon_after({function() ch:recv() end}, function() ch:send("v1") end)
    assert.are.equal(1, ch:len())    -- v1 is back: the channel is full
    local sender = braid.spawn(function() ch:send("v2") end)
    braid.yield()
    assert.are.equal("suspended", sender:status())
    assert.are.same({"v1", true}, {ch:recv()})   -- v2 takes v1's room
    sender:await()
    assert.are.same({"v2", true}, {ch:recv()})
  end))

  it("lets a rendezvous channel hold the value given back", h.run(function()
    local ch = braid.channel()
    abandon_after({function() ch:recv() end}, function() ch:send("v1") end)
    local sender = braid.spawn(function() ch:send("v2") end)
    braid.yield()
    assert.are.equal("suspended", sender:status())
    assert.are.same({"v1", true}, {ch:recv()})
    assert.are.same({"v2", true}, {ch:recv()})
    sender:await()
  end))

  it("gives a permit back to the semaphore", h.run(function()
    local sem = braid.semaphore(0, {max = 1})
    abandon_after({function() sem:acquire() end}, function() sem:release() end)
    assert.are.equal(1, sem:count())
    local with = braid.semaphore(0, {max = 1})
    abandon_after({function() with:with(function() end) end}, function()
      with:release()
    end)
    assert.are.equal(1, with:count())
  end))

  it("leaves nothing of a sender abandoned while it waits", h.run(function()
    local ch = braid.channel()
    abandon_after({function() ch:send("ghost") end}, function() end)
    assert.are.equal(0, ch:len())
    braid.spawn(function() ch:send("real") end)
    assert.are.same({"real", true}, {ch:recv()})
  end))
end)

describe("braid.event", function()
  it("wakes every waiter when set, and returns at once afterwards", h.virtual(function()
    local ev = braid.event()
    local woke = 0
    braid.scope(function(s)
      for _ = 1, 3 do s:spawn(function() ev:wait(); woke = woke + 1 end) end
      braid.sleep(1)
      assert.are.equal(0, woke)
      assert.is_false(ev:is_set())
      ev:set()
    end)
    assert.are.equal(3, woke)
    assert.is_true(ev:is_set())
    ev:wait()
  end))
end)

describe("deadlock detection", function()
  local function deadlock_of(body)
    local ok, e = pcall(braid.run, body)
    assert.is_false(ok)
    assert.are.equal("deadlock", e.kind)
    return e.message
  end

  it("names tasks waiting on a channel", function()
    local msg = deadlock_of(function()
      local ch = braid.channel()
      local t = braid.spawn(function() ch:recv() end)
      t.name = "consumer"
      t:await()
    end)
    assert.matches("consumer", msg)
    assert.matches("channel recv", msg)
  end)

  it("names tasks waiting on a semaphore", function()
    assert.matches("semaphore acquire", deadlock_of(function()
      braid.semaphore(0):acquire()
    end))
  end)

  -- a lock's waiters read "semaphore acquire"
  it("names tasks waiting on a lock", function()
    assert.matches("lock acquire", deadlock_of(function()
      local l = braid.lock()
      l:acquire()
      braid.spawn(function() l:with(function() end) end):await()
    end))
  end)

  it("names tasks waiting on an event", function()
    assert.matches("event wait", deadlock_of(function()
      braid.event():wait()
    end))
  end)
end)
