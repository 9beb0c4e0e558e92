-- Direct hand-offs (issue 14): a value goes straight onto a waiting
-- receiver's stack, so a receiver that is cancelled, times out or is
-- abandoned must never take a value with it, and no value may arrive twice.
local braid = require "braid"
local h = require "helper"

describe("a receiver cancelled while it waits (issue 14)", function()
  it("leaves the next value to the next receiver of a rendezvous channel", h.virtual(function()
    local ch = braid.channel()
    local first = braid.spawn(function() return ch:recv() end)
    local second = braid.spawn(function() return ch:recv() end)
    braid.sleep(1)
    first:cancel()
    ch:send("only")
    assert.is_true(braid.is_cancelled(select(2, pcall(first.await, first))))
    assert.are.same({"only", true}, {second:await()})
    assert.are.equal(0, ch:len())
  end))

  it("leaves the value in a buffered channel when no receiver is left", h.virtual(function()
    local ch = braid.channel(1)
    local r = braid.spawn(function() return ch:recv() end)
    braid.sleep(1)
    r:cancel()
    ch:send("kept")
    pcall(r.await, r)
    assert.are.equal(1, ch:len())
    assert.are.same({"kept", true}, {ch:recv()})
  end))

  it("leaves the value to the next receiver after a timeout", h.virtual(function()
    local ch = braid.channel()
    local ok, e = pcall(braid.timeout, 1, function() return ch:recv() end)
    assert.is_false(ok)
    assert.are.equal("timeout", e.kind)
    local later = braid.spawn(function() return ch:recv() end)
    braid.sleep(1)
    ch:send("late")
    assert.are.same({"late", true}, {later:await()})
  end))

  it("leaves the value when a select waiting on it is cancelled", h.virtual(function()
    local a, b = braid.channel(), braid.channel()
    local t = braid.spawn(function() return braid.select{{a, "recv"}, {b, "recv"}} end)
    braid.sleep(1)
    t:cancel()
    pcall(t.await, t)
    local r = braid.spawn(function() return b:recv() end)
    braid.sleep(1)
    b:send("for r")
    assert.are.same({"for r", true}, {r:await()})
  end))

  it("delivers each of many values exactly once while receivers are cancelled", h.virtual(function()
    local ch = braid.channel(2)
    local got, n = {}, 200
    braid.scope(function(s)
      s:spawn(function()
        for i = 1, n do ch:send(i) end
        ch:close()
      end)
      local receivers = {}
      for k = 1, 4 do
        receivers[k] = s:spawn(function()
          for v in ch:iter() do got[#got + 1] = v; braid.sleep(k % 2) end
        end)
      end
      braid.sleep(3)
      receivers[1]:cancel()   -- mid-stream: it holds no value of the stream
      receivers[3]:cancel()
    end)
    table.sort(got)
    assert.are.equal(n, #got)
    for i = 1, n do assert.are.equal(i, got[i]) end
  end))

  it("keeps values in order through two channels of capacity 1 (W4's ping-pong)", h.run(function()
    local ping, pong = braid.channel(1), braid.channel(1)
    local trips = 1000
    braid.gather(function()
      for i = 1, trips do
        ping:send(i)
        assert.are.same({i, true}, {pong:recv()})
      end
    end, function()
      for _ = 1, trips do pong:send((ping:recv())) end
    end)
  end))
end)

describe("type checks by tag (issue 14)", function()
  it("refuses an object of another braid type with the usual message", h.run(function()
    local ev = braid.event()
    local ok, e = pcall(braid.channel().send, ev, 1)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'channel:send' %(braid.Channel expected, got braid.Event%)",
      tostring(e))
    ok, e = pcall(braid.spawn(function() end).await, braid.channel())
    assert.matches("braid.Task expected, got braid.Channel", tostring(e))
    ok, e = pcall(braid.select, {{io.stdout, "recv"}})
    assert.matches("braid.Channel expected", tostring(e))
  end))

  it("is not fooled by a braid metatable put on another userdata with debug", h.run(function()
    local chan_mt = debug.getmetatable(braid.channel())
    local f = io.tmpfile()
    local file_mt = debug.getmetatable(f)
    debug.setmetatable(f, chan_mt)
    local ok, e = pcall(chan_mt.__index.send, f, 1)
    debug.setmetatable(f, file_mt)
    f:close()
    assert.is_false(ok)
    assert.matches("braid.Channel expected", tostring(e))
  end))

  it("does not depend on the registry's names or its engine entry", h.run(function()
    local reg = debug.getregistry()
    local ch = braid.channel(1)
    local task = braid.spawn(function() return "done" end)
    local saved = {}
    for k, v in pairs(reg) do   -- the names, and the engine's box
      if k == "braid.Channel" or k == "braid.Task" or
         (type(k) == "userdata" and type(v) == "userdata") then
        saved[k] = v
      end
    end
    for k in pairs(saved) do reg[k] = io.stdout end
    local ok, err = pcall(function()
      ch:send("v")
      assert.are.same({"v", true}, {ch:recv()})
      assert.are.same({"done"}, {task:await()})
      -- off the task's own coroutine the engine is looked up in the
      -- registry: a replaced entry is refused, not trusted
      local nested = coroutine.wrap(function() return pcall(ch.recv, ch) end)
      local okn, en = nested()
      assert.is_false(okn)
      assert.matches("not inside a braid task", tostring(en))
    end)
    for k, v in pairs(saved) do reg[k] = v end
    assert(ok, err)
  end))
end)

describe("the engine's registry entry (issue 14)", function()
  it("comes back when a script removes it and the collector runs", h.run(function()
    local reg = debug.getregistry()
    local key
    for k, v in pairs(reg) do
      if type(k) == "userdata" and type(v) == "userdata" then key = k end
    end
    assert.is_not_nil(key)
    local box = reg[key]
    reg[key] = nil
    box = nil
    collectgarbage(); collectgarbage()
    assert.is_not_nil(reg[key])   -- put back by its finalizer, not freed
    local t = braid.spawn(function() braid.sleep(0); return "alive" end)
    assert.are.equal("alive", t:await())
    local nested = coroutine.wrap(function() return braid.spawn(function() return 1 end) end)
    assert.are.equal(1, nested():await())   -- found through the registry again
  end))
end)
