local braid = require "braid"
local h = require "helper"

-- Everything left in a channel, without waiting: its values in order.
local function drain(ch)
  local t = {}
  while true do
    local i, v = braid.select{{ch, "recv"}, default = true}
    if i == nil then return t end
    t[#t + 1] = v
  end
end

describe("braid.select", function()
  it("commits the first case, in list order, that can go at once", h.run(function()
    local a, b = braid.channel(1), braid.channel(1)
    a:send("A"); b:send("B")
    assert.are.same({1, "A", true}, {braid.select{{a, "recv"}, {b, "recv"}}})
    assert.are.same({2, "B", true}, {braid.select{{a, "recv"}, {b, "recv"}}})
  end))

  -- options were read through the cases' __index, and an unknown key's
  -- __tostring ran inside braid's error message
  it("reads its options raw and never runs a bad key's __tostring", h.run(function()
    local ch = braid.channel(1)
    local cases = setmetatable({{ch, "recv"}}, {__index = {default = true}})
    braid.spawn(function() braid.sleep(0.01) ch:send("v") end)
    local i, v = braid.select(cases)
    assert.are.equal(1, i)
    assert.are.equal("v", v)
    local calls = 0
    local key = setmetatable({}, {__tostring = function() calls = calls + 1 return "k" end})
    local ok, e = pcall(braid.select, {{ch, "recv"}, [key] = true})
    assert.is_false(ok)
    assert.matches("unknown option 'table'", tostring(e), 1, true)
    assert.are.equal(0, calls)
  end))

  it("receives: i, v, true, and carries nil as a value", h.run(function()
    local ch = braid.channel(1)
    ch:send(nil)
    local r = table.pack(braid.select{{ch, "recv"}})
    assert.are.same({n = 3, 1, nil, true}, r)
  end))

  it("sends: returns i once the value is buffered or handed over", h.run(function()
    local full, room = braid.channel(1), braid.channel(1)
    full:send("old")
    assert.are.same({2}, {braid.select{{full, "send", "x"}, {room, "send", "y"}}})
    assert.are.same({"y"}, drain(room))
    assert.are.same({"old"}, drain(full))
    local ch = braid.channel()
    local r = braid.spawn(function() return ch:recv() end)
    braid.yield()
    assert.are.same({1}, {braid.select{{ch, "send", nil}}})
    assert.are.same({nil, true}, {r:await()})
  end))

  it("waits for the first case to become ready and leaves the others untouched", h.virtual(function()
    local a, b = braid.channel(), braid.channel()
    braid.spawn(function() braid.sleep(2); b:send("B") end)
    local t0 = braid.now()
    assert.are.same({2, "B", true}, {braid.select{{a, "recv"}, {b, "recv"}}})
    assert.are.equal(2, braid.now() - t0)
    -- a's queue holds nothing of the select: a sender waits for a receiver
    local s = braid.spawn(function() a:send("A") end)
    braid.yield()
    assert.are.equal("suspended", s:status())
    assert.are.same({"A", true}, {a:recv()})
    s:await()
  end))

  it("sends exactly one value when several send cases could go", h.virtual(function()
    local a, b = braid.channel(), braid.channel()
    local ra = braid.spawn(function() return a:recv() end)
    local rb = braid.spawn(function() return b:recv() end)
    braid.yield()
    assert.are.same({1}, {braid.select{{a, "send", "x"}, {b, "send", "y"}}})
    assert.are.equal("x", ra:await())
    assert.are.equal("suspended", rb:status())
    b:send("z")
    assert.are.equal("z", rb:await())
  end))

  it("a waiting send case delivers its value exactly once", h.virtual(function()
    local a, b = braid.channel(), braid.channel()
    local t = braid.spawn(function()
      return braid.select{{a, "send", "to a"}, {b, "send", "to b"}}
    end)
    braid.sleep(1)
    assert.are.same({"to b", true}, {b:recv()})
    assert.are.equal(2, t:await())
    assert.are.same({}, drain(a))
  end))

  it("copies the cases when called: changing a case table later changes nothing", h.virtual(function()
    local ch = braid.channel()
    local case = {ch, "send", "first"}
    local t = braid.spawn(function() return braid.select{case} end)
    braid.sleep(1)
    case[3] = "changed"
    assert.are.same({"first", true}, {ch:recv()})
    assert.are.equal(1, t:await())
  end))

  it("matches a select's send case with another select's receive case", h.virtual(function()
    local ch = braid.channel()
    local t = braid.spawn(function()
      return braid.select{{braid.channel(), "recv"}, {ch, "send", "v"}}
    end)
    braid.sleep(1)
    assert.are.same({2, "v", true}, {braid.select{{braid.channel(), "recv"}, {ch, "recv"}}})
    assert.are.equal(2, t:await())
  end))

  it("works inside a coroutine of the script's own", h.virtual(function()
    local ch = braid.channel()
    braid.spawn(function() braid.sleep(1); ch:send("v") end)
    local gen = coroutine.wrap(function()
      coroutine.yield(braid.select{{ch, "recv"}})
    end)
    assert.are.equal(1, gen())
  end))

  describe("default", function()
    it("returns nil at once when no case can go, committing nothing", h.run(function()
      local ch = braid.channel()
      local s = braid.spawn(function() ch:send("later") end)
      assert.is_nil(braid.select{{ch, "recv"}, {braid.channel(1), "recv"}, default = true})
      -- and does not suspend: it works where Lua cannot yield
      local r
      table.sort({2, 1}, function(x, y)
        r = braid.select{{braid.channel(), "recv"}, default = true}
        return x < y
      end)
      assert.is_nil(r)
      assert.are.same({"later", true}, {ch:recv()})
      s:await()
    end))

    it("still commits a case that can go", h.run(function()
      local ch = braid.channel(1)
      ch:send(1)
      assert.are.same({1, 1, true}, {braid.select{{ch, "recv"}, default = true}})
      assert.are.same({1}, {braid.select{{ch, "send", 2}, default = true}})
      assert.is_nil(braid.select{{ch, "send", 3}, default = true})
      assert.are.same({2}, drain(ch))
    end))
  end)

  describe("timeout", function()
    it("returns nil when it passes with nothing committed", h.virtual(function()
      local ch = braid.channel()
      local t0 = braid.now()
      assert.is_nil(braid.select{{ch, "recv"}, timeout = 5})
      assert.are.equal(5, braid.now() - t0)
      -- its node left the queue: a later sender is not taken by it
      local s = braid.spawn(function() ch:send("v") end)
      braid.yield()
      assert.are.equal("suspended", s:status())
      assert.are.same({"v", true}, {ch:recv()})
      s:await()
    end))

    it("does not fire once a case committed", h.virtual(function()
      local ch = braid.channel()
      braid.spawn(function() braid.sleep(1); ch:send("v") end)
      assert.are.same({1, "v", true}, {braid.select{{ch, "recv"}, timeout = 5}})
      braid.sleep(10)   -- the timer would have woken the task here
    end))

    it("of 0 or less returns nil at the next turn; math.huge is no timeout", h.virtual(function()
      assert.is_nil(braid.select{{braid.channel(), "recv"}, timeout = 0})
      assert.is_nil(braid.select{{braid.channel(), "recv"}, timeout = -1})
      assert.is_nil(braid.select{timeout = 1})
      local ch = braid.channel()
      braid.spawn(function() braid.sleep(100); ch:send(1) end)
      assert.are.same({1, 1, true}, {braid.select{{ch, "recv"}, timeout = math.huge}})
    end))
  end)

  describe("cancellation", function()
    it("commits nothing when the waiting select is cancelled", h.virtual(function()
      local a, b = braid.channel(), braid.channel()
      local t = braid.spawn(function()
        return braid.select{{a, "recv"}, {b, "send", "never"}, timeout = 5}
      end)
      braid.sleep(1)
      t:cancel()
      local ok, e = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(braid.is_cancelled(e))
      assert.are.same({}, drain(b))           -- the send did not happen
      local s = braid.spawn(function() a:send("kept") end)
      braid.yield()
      assert.are.same({"kept", true}, {a:recv()})   -- nor the receive
      s:await()
      braid.sleep(10)                         -- nor does its timer fire
    end))

    it("is level-triggered: a cancelled task's select raises, even with a case ready", h.run(function()
      local ch = braid.channel(1)
      ch:send("stays")
      local t = braid.spawn(function()
        braid.current():cancel()
        local ok, e = pcall(braid.select, {{ch, "recv"}, default = true})
        assert.is_true(braid.is_cancelled(e))
        ok, e = pcall(braid.select, {{ch, "recv"}})
        assert.is_true(braid.is_cancelled(e))
      end)
      pcall(t.await, t)
      assert.are.same({"stays"}, drain(ch))
    end))

    it("lets a case that committed in the cancel's turn win", h.virtual(function()
      local ch = braid.channel()
      local t = braid.spawn(function() return braid.select{{ch, "recv"}} end)
      braid.sleep(1)
      ch:send("precious")
      t:cancel()
      assert.are.same({1, "precious", true}, {t:await()})
    end))
  end)

  describe("closed channels", function()
    it("commits a receive on a closed, drained channel with nil, false", h.virtual(function()
      local ch = braid.channel(1)
      ch:send("last")
      ch:close()
      assert.are.same({1, "last", true}, {braid.select{{ch, "recv"}}})
      assert.are.same({1, nil, false}, {braid.select{{ch, "recv"}}})
      local w = braid.channel()
      local t = braid.spawn(function() return braid.select{{braid.channel(), "recv"}, {w, "recv"}} end)
      braid.sleep(1)
      w:close()
      assert.are.same({2, nil, false}, {t:await()})
    end))

    it("raises kind closed for a send case on a closed channel, unless an earlier case goes", h.virtual(function()
      local ch, ready = braid.channel(), braid.channel(1)
      ch:close()
      local ok, e = pcall(braid.select, {{braid.channel(), "recv"}, {ch, "send", 1}})
      assert.is_false(ok)
      assert.are.equal("closed", e.kind)
      assert.matches("braid.select: case 2 sends on a channel that is closed", e.message, 1, true)
      ready:send("r")
      assert.are.same({1, "r", true}, {braid.select{{ready, "recv"}, {ch, "send", 1}}})
      local w = braid.channel()
      local t = braid.spawn(function() return pcall(braid.select, {{w, "send", "x"}}) end)
      braid.sleep(1)
      w:close()
      ok, e = t:await()
      assert.is_false(ok)
      assert.are.equal("closed", e.kind)
      assert.are.equal("braid.select: case 1 sends on a channel that was closed while the value waited",
                       e.message)   -- as docs/API.md quotes it
    end))
  end)

  describe("fairness", function()
    it("serves waiters in the order they started waiting, selects and plain ones alike", h.virtual(function()
      local ch = braid.channel()
      local got = {}
      braid.scope(function(s)
        s:spawn(function() local v = ch:recv(); got[#got + 1] = "recv:" .. v end)
        s:spawn(function() local _, v = braid.select{{ch, "recv"}}; got[#got + 1] = "select:" .. v end)
        s:spawn(function() local v = ch:recv(); got[#got + 1] = "recv2:" .. v end)
        braid.sleep(1)
        ch:send(1); ch:send(2); ch:send(3)
      end)
      assert.are.same({"recv:1", "select:2", "recv2:3"}, got)
    end))

    it("a select waiting on one channel twice commits its first case", h.virtual(function()
      local ch = braid.channel()
      local t = braid.spawn(function() return braid.select{{ch, "recv"}, {ch, "recv"}} end)
      braid.sleep(1)
      ch:send("v")
      assert.are.same({1, "v", true}, {t:await()})
    end))
  end)

  describe("two receivers of one channel (issue 13.11)", function()
    -- Both receivers wait before the sender runs, so both are handed a
    -- value in the same turn.
    local function sender(ch)
      braid.spawn(function() braid.yield(); ch:send("v1"); ch:send("v2"); ch:close() end)
    end

    it("select consumes exactly one value: the other stays in the channel", h.run(function()
      local ch = braid.channel()
      sender(ch)
      assert.are.same({1, "v1", true}, {braid.select{{ch, "recv"}, {ch, "recv"}}})
      assert.are.same({"v2", true}, {ch:recv()})
      assert.are.same({nil, false}, {ch:recv()})
    end))

    it("race, by contrast, discards the value its losing member received", h.run(function()
      local ch = braid.channel()
      sender(ch)
      local v = braid.race(function() return ch:recv() end, function() return ch:recv() end)
      assert.are.equal("v1", v)
      assert.are.same({nil, false}, {ch:recv()})   -- v2 went to the loser
    end))
  end)

  it("gives a value back when its task is abandoned after the case committed (issue 13.10)", h.run(function()
    local ch, other = braid.channel(), braid.channel(1)
    local stop, ran = false, false
    braid.scope(function(busy)
      for _ = 1, 20000 do busy:spawn(function() while not stop do braid.yield() end end) end
      local scope, t
      local holder = braid.spawn(function()
        braid.scope(function(s)
          scope = s
          t = s:spawn(function()
            braid.shield(braid.select, {{other, "recv"}, {ch, "recv"}, timeout = 60})
            ran = true
          end)
          braid.sleep(3600)
        end, {grace = 0})
      end)
      repeat braid.yield() until t and t:status() == "suspended"
      scope:cancel()
      ch:send("v1")   -- commits the select; the grace period abandons it first
      holder:await()
      stop = true
    end)
    assert.is_false(ran)
    assert.are.same({"v1"}, drain(ch))
    other:send("o")   -- the select left other's queue: o is buffered
    assert.are.same({"o"}, drain(other))
  end))

  it("is named in deadlock reports", function()
    local ok, e = pcall(braid.run, function() braid.select{{braid.channel(), "recv"}} end)
    assert.is_false(ok)
    assert.are.equal("deadlock", e.kind)
    assert.matches("select", e.message)
  end)

  it("rejects bad cases and options", h.run(function()
    local ch = braid.channel()
    local function err(cases)
      local ok, e = pcall(braid.select, cases)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      return e.message
    end
    assert.matches("bad argument #1 to 'braid.select' (table expected", err(42), 1, true)
    assert.matches("(case 1: table expected, got number)", err({42}), 1, true)
    assert.matches("(case 2: braid.Channel expected, got nil)", err({{ch, "recv"}, {nil, "recv"}}), 1, true)
    assert.matches([[(case 1: "recv" or "send" expected, got rcv)]], err({{ch, "rcv"}}), 1, true)
    assert.matches("(unknown option 'timout')", err({{ch, "recv"}, timout = 1}), 1, true)
    assert.matches("(the cases must be a list without holes)", err({{ch, "recv"}, [3] = {ch, "recv"}}), 1, true)
    assert.matches("bad option 'timeout' to 'braid.select' (number of seconds expected",
                   err({{ch, "recv"}, timeout = "soon"}), 1, true)
    assert.matches("bad option 'default' to 'braid.select' (boolean expected",
                   err({{ch, "recv"}, default = 1}), 1, true)
    assert.matches("(a select with default never waits)",
                   err({{ch, "recv"}, default = true, timeout = 1}), 1, true)
  end))
end)
