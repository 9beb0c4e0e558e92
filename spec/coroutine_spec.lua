local braid = require "braid"
local h = require "helper"

describe("user coroutines inside tasks", function()
  it("keep standard semantics for generators", h.run(function()
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    assert.are.same({1, 2, 3}, {gen(), gen(), gen()})
    local co = coroutine.create(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
    assert.are.same({true, 2}, {coroutine.resume(co, 1)})
    assert.are.same({true, 10}, {coroutine.resume(co, 5)})
    assert.are.same({false, "cannot resume dead coroutine"}, {coroutine.resume(co)})
  end))

  it("suspend the whole task when they make a braid call", h.virtual(function()
    local t0 = braid.now()
    local gen = coroutine.wrap(function()
      for i = 1, 3 do braid.sleep(1); coroutine.yield(i) end
    end)
    local other = braid.spawn(function() return "ran meanwhile" end)
    assert.are.same({1, 2, 3}, {gen(), gen(), gen()})
    assert.are.equal(3, braid.now() - t0)
    assert.are.equal("ran meanwhile", other:await())
  end))

  it("deliver cancellation through the user's coroutine", h.virtual(function()
    local t = braid.spawn(function()
      local co = coroutine.create(function() braid.sleep(100) end)
      local ok, e = coroutine.resume(co)
      return ok, e
    end)
    braid.sleep(1)
    t:cancel()
    local ok, e = t:await()
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
  end))

  it("refuse a resume of a coroutine suspended in a braid call", h.virtual(function()
    local co = coroutine.create(function() braid.sleep(5) return "done" end)
    local t = braid.spawn(function() return coroutine.resume(co) end)
    braid.sleep(1)
    local ok, e = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("suspended in a braid call", e)
    assert.are.same({true, "done"}, {t:await()})
    local gen = coroutine.wrap(function() braid.sleep(5) return "gen" end)
    local u = braid.spawn(gen)
    braid.sleep(1)
    local ok2, e2 = pcall(gen)
    assert.is_false(ok2)
    assert.matches("suspended in a braid call", e2)
    assert.are.equal("gen", u:await())
  end))
end)

describe("coroutine.yield in a task body", function()
  it("raises Lua's error for yielding outside a coroutine", h.run(function()
    local ok, e = pcall(coroutine.yield, 1)
    assert.is_false(ok)
    assert.matches("attempt to yield from outside a coroutine", e)
    assert.is_false(coroutine.isyieldable())
  end))
end)

describe("braid calls across Lua boundaries", function()
  it("work inside pcall, xpcall, metamethods and iterators", h.virtual(function()
    assert.are.same({true, "p"}, {pcall(function() braid.sleep(1) return "p" end)})
    assert.are.same({true, "x"}, {xpcall(function() braid.sleep(1) return "x" end, debug.traceback)})
    local obj = setmetatable({}, {
      __index = function(_, k) braid.sleep(1) return k .. "!" end,
      __add = function() braid.sleep(1) return 42 end,
    })
    assert.are.equal("hi!", obj.hi)
    assert.are.equal(42, obj + 1)
    local function iter(_, i) if i < 3 then braid.sleep(1) return i + 1 end end
    local seen = {}
    for i in iter, nil, 0 do seen[#seen + 1] = i end
    assert.are.same({1, 2, 3}, seen)
  end))

  it("raise an error naming the boundary where Lua cannot yield", h.run(function()
    local ok, e = pcall(table.sort, {3, 1, 2}, function(a, b) braid.sleep(0) return a < b end)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("braid.sleep: cannot suspend here", e.message)
    local obj = setmetatable({}, {__tostring = function() braid.yield() return "x" end})
    ok, e = pcall(tostring, obj)
    assert.matches("cannot suspend here", e.message)
  end))

  -- Regression (found while writing process.c): a braid call in a user
  -- coroutine resumed from a C function that cannot yield raised the usage
  -- error but left its wait registered, so a later wake-up resumed the task
  -- while it slept (sleep returned at once), then crashed the scheduler.
  it("undo the wait when a user coroutine cannot suspend the task", h.run(function()
    local target = braid.spawn(braid.sleep, 0.05)
    local calls = {
      function() return target:await() end,
      function() braid.yield() end,
      function() braid.sleep(0.05) end,
    }
    for _, f in ipairs(calls) do
      local co = coroutine.wrap(f)
      local ok, e = pcall(table.sort, {1, 2, 3}, function() co() return false end)
      assert.matches("cannot suspend here", e.message)
    end
    local t0 = braid.now()
    braid.sleep(0.3)
    assert.is_true(braid.now() - t0 >= 0.29, "woken early")
  end))

  -- Regression (issue "Real work"): a sleep refused this way stayed armed
  -- and later woke the task in the middle of an await, which then returned
  -- garbage for a task that had not ended.
  it("leave nothing pending when refused inside a coroutine that cannot yield", h.run(function()
    local ok, e = pcall(table.sort, {1, 2}, function(a, b)
      coroutine.wrap(function() braid.sleep(0.01) end)()
      return a < b
    end)
    assert.is_false(ok)
    assert.matches("cannot suspend here", tostring(e))
    local t = braid.spawn(function() braid.sleep(0.1) return "late" end)
    assert.are.equal("late", t:await())
    assert.are.equal("ok", t:status())
  end))
end)

describe("coroutine.close and resume of a task's coroutines", function()
  -- Found by adversarial embedding tests: closing a coroutine a task runs
  -- in, or one a task is suspended through, freed the task's scopes or a
  -- pending operation's data under the scheduler (heap-use-after-free).
  it("refuses to close or resume a task's own coroutine and one a task is suspended through", h.run(function()
    local me
    local a = braid.spawn(function() me = coroutine.running() braid.sleep(10) end)
    local inner
    local b = braid.spawn(function()
      local f = coroutine.wrap(function() inner = coroutine.running() braid.sleep(10) end)
      f()
    end)
    braid.yield()
    for _, co in ipairs({me, inner}) do
      local ok, e = pcall(coroutine.close, co)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      assert.matches("cannot close a coroutine that a braid task runs in", e.message)
      -- nor can another task resume it (that ran the task's continuation
      -- in the wrong task)
      assert.are.same({false, "cannot resume coroutine: it is suspended in a braid call of a task"},
        {coroutine.resume(co)})
    end
    a:cancel()
    b:cancel()
    for _, t in ipairs({a, b}) do
      local ok, e = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(braid.is_cancelled(e))
      assert.are.equal("cancelled", t:status())
    end
  end))

  it("knows a task's coroutine at any depth (its bottom frame is braid's)", h.run(function()
    for _, depth in ipairs({0, 1, 2, 7, 64, 1000}) do
      local me
      local function deep(n)
        if n == 0 then me = coroutine.running(); braid.sleep(10)
        else deep(n - 1) end   -- not a tail call: one frame per level
        return n
      end
      local a = braid.spawn(deep, depth)
      braid.yield()
      assert.are.same({false, "cannot resume coroutine: it is suspended in a braid call of a task"},
        {coroutine.resume(me)})
      a:cancel()
      assert.is_false((pcall(a.await, a)))
    end
    -- a script's own coroutine parked in a plain yield is its own to resume
    local co = coroutine.create(function() coroutine.yield(1) return 2 end)
    assert.are.same({true, 1}, {coroutine.resume(co)})
    assert.are.same({true, 2}, {coroutine.resume(co)})
  end))

  -- A value handed to a waiting task sits on its suspended thread until
  -- the task runs: the thread stays refused in that window, and the value
  -- (and the channel's order) are kept.
  it("refuses a resume between a hand-off and the receiver's run", h.run(function()
    local ch = braid.channel()
    local me, inner
    local a = braid.spawn(function() me = coroutine.running() return ch:recv() end)
    local b = braid.spawn(function()
      local f = coroutine.wrap(function() inner = coroutine.running() return ch:recv() end)
      return f()
    end)
    braid.yield()
    ch:send("first")    -- handed to a, which has not run yet
    ch:send("second")   -- handed to b's own coroutine
    for _, co in ipairs({me, inner}) do
      assert.are.same({false, "cannot resume coroutine: it is suspended in a braid call of a task"},
        {coroutine.resume(co)})
      local ok, e = pcall(coroutine.close, co)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
    end
    assert.are.same({"first", true}, {a:await()})
    assert.are.same({"second", true}, {b:await()})
  end))

  -- the debug library hands scripts the function at the bottom of every
  -- task's coroutine; a coroutine of theirs running it is still theirs
  it("tells a script's coroutine from a task's even when it runs braid's task entry", h.run(function()
    local entry
    braid.spawn(function()
      local level = 1
      while debug.getinfo(level + 1, "f") do level = level + 1 end
      entry = debug.getinfo(level, "f").func
    end):await()
    assert.is_false((pcall(entry)))   -- no function: refused, not undefined
    local co = coroutine.create(entry)
    assert.are.same({true, 7}, {coroutine.resume(co, function() coroutine.yield(7) return 8 end)})
    assert.are.same({true, 8}, {coroutine.resume(co)})
    -- called in a task, it raises what its function raises, as pcall's
    -- callee would; nothing it returns can make a task count as failed
    local t = braid.spawn(function()
      local r = table.pack(pcall(entry, function() error("inner") end))
      assert.is_false(r[1])
      assert.matches("inner", tostring(r[2]))
      return table.unpack(r, 1, r.n)
    end)
    assert.are.equal(false, (t:await()))
    assert.are.equal("ok", t:status())
  end))

  it("closes the script's own coroutines as Lua does", h.run(function()
    local closed = false
    local co = coroutine.create(function()
      local x <close> = setmetatable({}, {__close = function() closed = true end})
      coroutine.yield(1)
    end)
    assert.is_true((coroutine.resume(co)))
    assert.is_true(coroutine.close(co))
    assert.is_true(closed)
    assert.are.equal("dead", coroutine.status(co))
    local ok, e = coroutine.close(coroutine.create(function() end))
    assert.is_true(ok)
    assert.is_nil(e)
  end))
end)

describe("a braid call in a coroutine resumed where the task cannot yield", function()
  -- It used to start the operation, find out at the yield that it could
  -- not suspend, and undo it: a write closed the stream, a child was
  -- spawned and killed. Now it is refused before anything starts.
  it("is refused before it starts anything", h.run(function()
    local server = braid.tcp.listen(nil, 0, function() braid.sleep(5) end)
    local c = braid.tcp.connect("127.0.0.1", server:port())
    local big = string.rep("x", 8 * 1024 * 1024)   -- more than a socket takes at once
    local marker = os.tmpname()
    os.remove(marker)
    local attempts = {
      function() c:write(big) end,
      function() braid.exec({"sh", "-c", "echo > " .. marker}) end,
      function() braid.sleep(1) end,
    }
    for _, f in ipairs(attempts) do
      local ok, e = pcall(table.sort, {1, 2}, function(a, b)
        coroutine.wrap(f)()
        return a < b
      end)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      assert.matches("cannot suspend here", e.message)
    end
    assert.is_nil(io.open(marker))        -- the child never started
    c:write("still open\n")                -- the stream was not closed
    c:close()
    server:close()
  end))
end)

describe("Lua's own coroutine functions", function()
  -- a library that took coroutine.wrap before require "braid" replaced it:
  -- braid's marker came back to the script while the task, registered as
  -- waiting, ran on (a SIGSEGV in the timer heap)
  it("refuse a braid call in a coroutine they resumed, with a usage error", function()
    local p = h.script([[
      local lib_wrap = coroutine.wrap
      local braid = require "braid"
      braid.run(function()
        braid.spawn(function()
          local it = lib_wrap(function()
            for i = 1, 3 do braid.sleep(0.01) coroutine.yield(i) end
          end)
          local ok, e = pcall(it)
          print(ok, e.kind, e.message)
          braid.sleep(0.02)
        end):await()
      end)
      print("run ended")
    ]])
    local out, err, code = h.sh("lua5.4 " .. p)
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.matches("^false\tusage\t[^\n]*%.lua:6: braid.sleep: cannot suspend here: " ..
                   "this coroutine was resumed by Lua's own", out)
    assert.matches("run ended\n$", out)
  end)
end)

-- Review "prims" 1: scopes are a stack per task, and a scope's record lives
-- on the stack of the coroutine that opened it. A plain coroutine.yield out
-- of one left it the task's innermost: its children outlived the task, its
-- deadline cut the task's later code, its shield deferred cancellation for
-- good, and once the coroutine was collected the scheduler read freed
-- memory (heap-use-after-free under ASan). That yield is refused now.
describe("a coroutine.yield out of a scope opened in the same coroutine", function()
  local function refused(ok, e)
    assert.is_false(ok)
    assert.is_true(braid.is_error(e, "usage"), tostring(e))
    assert.matches("coroutine.yield: cannot yield out of a braid.scope, timeout, move_on or shield opened inside this coroutine", e.message, 1, true)
  end

  it("is refused inside braid.scope; the scope's child does not outlive it", h.virtual(function()
    local child, ended
    local t = braid.spawn(function()
      local co = coroutine.wrap(function()
        braid.scope(function(s)
          child = s:spawn(function() braid.sleep(5) ended = true end)
          coroutine.yield("yielded")
        end)
      end)
      refused(pcall(co))
      assert.are.equal("cancelled", child:status())
      return "task returns"
    end)
    assert.are.equal("task returns", t:await())
    for _ = 1, 3 do collectgarbage() end
    local junk = {}
    for i = 1, 1000 do junk[i] = braid.channel(1) end
    braid.sleep(10)
    assert.is_nil(ended)
  end))

  it("is refused inside braid.timeout and move_on; their deadline does not cut the task's later code", h.virtual(function()
    local co = coroutine.wrap(function()
      braid.timeout(1, function() coroutine.yield("y") end)
    end)
    refused(pcall(co))
    local ok = pcall(braid.sleep, 2)
    assert.is_true(ok)
    local mo = coroutine.wrap(function()
      return braid.move_on(1, function() coroutine.yield("y") end)
    end)
    refused(pcall(mo))
    assert.is_true((pcall(braid.sleep, 2)))
  end))

  it("is refused inside braid.shield; the task can still be cancelled", h.virtual(function()
    local t = braid.spawn(function()
      local co = coroutine.create(function()
        braid.shield(function() coroutine.yield("y") end)
      end)
      refused(coroutine.resume(co))
      braid.sleep(100)
      return "shield left open"
    end)
    braid.sleep(1)
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("cancelled", t:status())
  end))

  it("leaves the task's later scopes intact and the coroutine dead", h.virtual(function()
    local co = coroutine.wrap(function()
      braid.scope(function(s)
        s:spawn(function() braid.sleep(2) end)
        coroutine.yield(1)
      end)
      return "co done"
    end)
    refused(pcall(co))
    local child_done
    local r = braid.scope(function(s2)
      s2:spawn(function() braid.sleep(5) child_done = true end)
      local ok, e = pcall(co)
      assert.is_false(ok)
      assert.matches("cannot resume dead coroutine", e)
      return "s2 body"
    end)
    assert.are.equal("s2 body", r)
    assert.is_true(child_done)
    collectgarbage(); collectgarbage()
    assert.is_true((pcall(braid.sleep, 1)))
  end))

  it("leaves nothing behind for coroutine.close", h.virtual(function()
    local ended
    local co = coroutine.create(function()
      braid.timeout(50, function()
        braid.spawn(function() braid.sleep(5) ended = true end)
        coroutine.yield(1)
      end)
    end)
    refused(coroutine.resume(co))
    assert.are.equal("dead", coroutine.status(co))
    assert.is_false((coroutine.close(co)))
    collectgarbage(); collectgarbage()
    assert.is_true((pcall(braid.sleep, 10)))
    assert.is_nil(ended)
  end))

  it("can be caught inside the scope, which then goes on", h.virtual(function()
    local co = coroutine.create(function()
      local r = braid.scope(function()
        refused(pcall(coroutine.yield, 1))
        braid.sleep(1)
        return "kept"
      end)
      coroutine.yield(r)   -- the scope has returned: a plain yield again
      return "end"
    end)
    assert.are.same({true, "kept"}, {coroutine.resume(co)})
    assert.are.same({true, "end"}, {coroutine.resume(co)})
  end))
end)

describe("coroutines and scopes that keep working", function()
  it("a generator resumed inside a scope yields to it", h.virtual(function()
    local r = braid.scope(function()
      local g = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
      return g() + g() + g()
    end)
    assert.are.equal(6, r)
  end))

  it("a generator nested in a coroutine's scope, and braid calls inside it", h.virtual(function()
    local t0 = braid.now()
    local outer = coroutine.wrap(function()
      local x = braid.scope(function(s)
        local g = coroutine.wrap(function()
          for i = 1, 2 do braid.sleep(1); coroutine.yield(i) end
        end)
        local c = s:spawn(function() braid.sleep(3) return 4 end)
        return g() + g() + c:await()
      end)
      coroutine.yield(x)
      local y = braid.timeout(10, function()
        braid.sleep(1)
        return braid.shield(function() braid.sleep(1) return "shielded" end)
      end)
      return y
    end)
    assert.are.equal(7, outer())
    assert.are.equal(3, braid.now() - t0)
    assert.are.equal("shielded", outer())
    assert.are.equal(5, braid.now() - t0)
  end))
end)
