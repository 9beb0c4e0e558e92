-- spec/xchan_spec.lua: shared channels, braid.channel(n, {shared = true})
-- (engine/io/xchan.c): local-channel rules across worker threads.
local braid = require "braid"
local helper = require "helper"
local run = helper.run

-- A worker that uses the channels it is given.
local SRC <const> = [[
  local braid = require "braid"
  return {
    produce = function(ch, n, close)
      for i = 1, n do ch:send({i = i, s = "v" .. i}) end
      if close then ch:close() end
      return n
    end,
    consume = function(ch)
      local got = {}
      for v in ch:iter() do got[#got + 1] = v end
      return got
    end,
    recv1 = function(ch) return ch:recv() end,
    -- n receivers, every `every`-th cancelled while it may wait
    recv_some = function(ch, n, every)
      local got = {}
      braid.scope(function(s)
        local ts = {}
        for i = 1, n do
          ts[i] = s:spawn(function()
            local v, ok = ch:recv()
            if ok then got[#got + 1] = v end
          end)
        end
        braid.sleep(0.02)
        for i = 1, n, every do ts[i]:cancel() end
      end)
      return got
    end,
    send1 = function(ch, v) ch:send(v) return true end,
    echo = function(...) return ... end,
    make = function(n) return braid.channel(n, {shared = true}) end,
    pipe = function(inp, out)   -- copies inp to out until inp closes
      for v in inp:iter() do out:send(v) end
      out:close()
    end,
  }
]]

describe("braid.channel shared", function()
  it("works in one thread like a local channel", run(function()
    local ch = braid.channel(2, {shared = true})
    ch:send(1)
    ch:send({a = {b = "c"}})
    assert.equal(2, ch:len())
    assert.equal(1, ch:recv())
    assert.same({a = {b = "c"}}, (ch:recv()))
    ch:send(nil)
    local v, ok = ch:recv()
    assert.is_nil(v)
    assert.is_true(ok)
    ch:close()
    v, ok = ch:recv()
    assert.is_nil(v)
    assert.is_false(ok)
    local e = select(2, pcall(ch.send, ch, 1))
    assert.equal("closed", e.kind)
  end))

  it("carries values from a worker in FIFO order, then nil after close", run(function()
    local w <close> = braid.worker(SRC)
    local ch = braid.channel(3, {shared = true})
    local t = braid.spawn(function() return w:call("produce", ch, 200, true) end)
    for i = 1, 200 do
      local v, ok = ch:recv()
      assert.is_true(ok)
      assert.same({i = i, s = "v" .. i}, v)
    end
    assert.same({nil, false}, {ch:recv()})
    assert.equal(200, t:await())
  end))

  it("carries values to a worker, and back through a second channel", run(function()
    local w <close> = braid.worker(SRC)
    local inp = braid.channel(0, {shared = true})
    local out = braid.channel(1, {shared = true})
    local pipe = braid.spawn(function() w:call("pipe", inp, out) end)
    braid.spawn(function()
      for i = 1, 100 do inp:send(i) end
      inp:close()
    end)
    local n = 0
    for v in out:iter() do
      n = n + 1
      assert.equal(n, v)
    end
    assert.equal(100, n)
    -- out closes before the call has returned: closing w (the body's end)
    -- before that would fail the call (a flake under TSan's slowness)
    pipe:await()
  end))

  it("holds senders back at its capacity", run(function()
    local w <close> = braid.worker(SRC)
    local ch = braid.channel(2, {shared = true})
    local sent = 0
    local t = braid.spawn(function()
      for i = 1, 5 do ch:send(i) sent = i end
    end)
    braid.sleep(0.05)
    assert.equal(2, sent)
    assert.equal(2, ch:len())
    assert.equal(1, w:call("recv1", ch))
    braid.sleep(0.05)
    assert.equal(3, sent)
    t:cancel()
  end))

  it("makes a rendezvous sender wait for a receiver in the worker", run(function()
    local w <close> = braid.worker(SRC)
    local ch = braid.channel(0, {shared = true})
    local done = false
    braid.spawn(function() ch:send("x") done = true end)
    braid.sleep(0.05)
    assert.is_false(done)
    assert.equal("x", w:call("recv1", ch))
    braid.sleep(0)
    assert.is_true(done)
  end))

  it("can be made in a worker and returned", run(function()
    local w <close> = braid.worker(SRC)
    local ch = w:call("make", 4)
    assert.truthy(tostring(ch):find("braid.SharedChannel"))
    assert.is_true(w:call("send1", ch, "hi"))
    assert.equal("hi", ch:recv())
  end))

  it("close wakes a receiver waiting in a worker and senders raise closed", run(function()
    local w <close> = braid.worker(SRC)
    local ch = braid.channel(0, {shared = true})
    local r = braid.spawn(function() return {w:call("recv1", ch)} end)
    local s = braid.spawn(function()
      return pcall(w.call, w, "send1", braid.channel(0, {shared = true}), 1)
    end)
    braid.sleep(0.05)
    ch:close()
    assert.same({nil, false}, r:await())
    s:cancel()
  end))

  it("loses and duplicates nothing when waiters on both sides are cancelled", run(function()
    local w <close> = braid.worker(SRC)
    local ch = braid.channel(1, {shared = true})
    local N = 200
    local sent = {}
    -- senders here, some cancelled while they wait
    local senders = braid.spawn(function()
      braid.scope(function(s)
        for i = 1, N do
          local t = s:spawn(function()
            if pcall(ch.send, ch, i) then sent[i] = true end
          end)
          if i % 3 == 0 then braid.sleep(0) t:cancel() end
        end
      end)
    end)
    -- receivers in the worker, some cancelled while they wait (there: a
    -- cancelled worker:call would drop a value its task had received)
    local got = w:call("recv_some", ch, 40, 4)
    ch:close()   -- the senders still waiting raise closed: not sent
    senders:await()
    for v in ch:iter() do got[#got + 1] = v end
    local seen, n = {}, 0
    for _, v in ipairs(got) do
      assert.is_nil(seen[v], "duplicated " .. tostring(v))
      seen[v] = true
    end
    for i = 1, N do
      assert.equal(sent[i] or false, seen[i] or false, "value " .. i)
      if sent[i] then n = n + 1 end
    end
    assert.is_true(n >= 30)
  end))

  -- The receiver's copy failed (its memory limit) and the message was
  -- freed all the same, the receiver getting a bare "not enough memory".
  it("keeps a value a receiver has no memory for, in order, and raises kind memory", run(function()
    local ch = braid.channel(4, {shared = true})
    local w <close> = braid.worker([==[ return {take = function(ch)
      local ok, e = pcall(ch.recv, ch)
      return ok, type(e) == "table" and e.kind or type(e), tostring(e)
    end} ]==], {memory_limit = 4 * 1024 * 1024})
    local big = string.rep("q", 8 * 1024 * 1024)
    ch:send(big)
    ch:send("next")
    local ok, kind, msg = w:call("take", ch)
    assert.is_false(ok)
    assert.equal("memory", kind, msg)
    assert.matches("^channel:recv: not enough memory for a message of %d+ bytes", msg)
    assert.equal(2, ch:len())
    assert.equal(big, (ch:recv()))   -- still first
    assert.equal("next", (ch:recv()))
  end))

  it("refuses functions in a value and bad options", run(function()
    local ch = braid.channel(1, {shared = true})
    local e = select(2, pcall(ch.send, ch, {f = print}))
    assert.equal("usage", e.kind)
    assert.truthy(tostring(e):find("value%[1%]%.f"))
    e = select(2, pcall(braid.channel, 1, {share = true}))
    assert.equal("usage", e.kind)
    e = select(2, pcall(braid.channel, -1, {shared = true}))
    assert.equal("usage", e.kind)
    local loc = braid.channel(1, {shared = false})
    assert.is_nil(tostring(loc):find("Shared"))
    loc:send(print)   -- a local channel carries anything
    assert.equal(print, loc:recv())
  end))

  -- The local constructor behind braid.channel was reached through
  -- lua_call, so its usage errors named no position (a C frame has none).
  it("names the caller's file:line in a bad capacity's usage error", run(function()
    local here = debug.getinfo(1, "S").short_src
    for _, args in ipairs({{"x"}, {0/0}, {1.5}, {"x", {shared = false}},
                           {0/0, {shared = true}}}) do
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, e = pcall(function() return braid.channel(table.unpack(args, 1, 2)) end)
      assert.is_false(ok)
      assert.equal("usage", e.kind)
      local msg = tostring(e.message)
      local want = here .. ":" .. line .. ": bad argument #1 to 'braid.channel' ("
      assert.equal(want, msg:sub(1, #want), msg)
    end
  end))
end)
