-- spec/regress_spec.lua: minimized findings of tools/fuzz.lua. Each `it`
-- names the symptom; the commit that added it names the engine fix.
local braid = require "braid"
local h = require "helper"

describe("fuzz regressions", function()
  -- fuzz seed 15023 (from 4877, under ASan): timer_fire kept due deadlines
  -- on a list on its stack; a grace period firing in the same turn
  -- abandoned the task owning one of them, whose scope release freed it.
  it("does not touch a deadline freed by a grace period that fired in the same turn", h.virtual(function()
    local closed = 0
    braid.scope(function(s)
      s:spawn(function()
        braid.shield(function()
          local c <close> = setmetatable({}, {__close = function() closed = closed + 1 end})
          braid.timeout(4, braid.sleep, 1000)   -- due at 4, armed before the grace
        end)
      end)
      braid.sleep(1)
      s:cancel()
    end, {grace = 3})                           -- grace period ends at 4 too
    assert.are.equal(1, closed)
    assert.are.equal(4, braid.now())
  end))

  -- found by spec/badinput_spec.lua (ASan: heap-use-after-free in
  -- braid__task_checkcancel): braid.scope and the group functions checked
  -- opts.grace after pushing their scope, so a bad grace left the task's
  -- innermost scope pointing into a userdata the collector then freed.
  it("leaves the task usable after braid.scope or gather rejects opts.grace", function()
    local child_ran = false
    braid.run(function()
      for _, bad in ipairs({{}, 0 / 0, "x"}) do
        local ok, e = pcall(braid.scope, function() end, {grace = bad})
        assert.are.equal("usage", e.kind)
        for _, name in ipairs({"gather", "race", "any"}) do
          ok, e = pcall(braid[name], function() end, {grace = bad})
          assert.are.equal("usage", e.kind)
        end
        ok, e = pcall(braid.map, {1}, function() end, {grace = bad})
        assert.are.equal("usage", e.kind)
      end
      collectgarbage(); collectgarbage()
      braid.sleep(1)
      braid.spawn(function() braid.sleep(1); child_ran = true end)
      assert.are.same({1, 2}, {braid.gather(function() return 1 end, function() return 2 end)})
    end, {clock = "virtual"})
    assert.is_true(child_ran)
  end)

  -- fuzz seed 280 (after the event/coroutine nodes were added): abandoning
  -- a task reset the task's own thread only, so <close> variables of a
  -- user coroutine (coroutine.wrap) the task was suspended through never ran.
  it("runs <close> variables inside user coroutines of an abandoned task", h.virtual(function()
    local closed = {}
    local function closer(k)
      return setmetatable({}, {__close = function() closed[k] = (closed[k] or 0) + 1 end})
    end
    braid.scope(function(s)
      s:spawn(function()
        local outer = coroutine.wrap(function()
          local a <close> = closer("outer")
          local inner = coroutine.wrap(function()
            local b <close> = closer("inner")
            pcall(braid.sleep, 100)                          -- cancelled at 1
            braid.shield(function() braid.sleep(1000) end)   -- outlives the grace
          end)
          inner()
        end)
        local c <close> = closer("task")
        outer()
      end)
      braid.sleep(1)
      s:cancel()
    end, {grace = 2})
    assert.are.same({inner = 1, outer = 1, task = 1}, closed)
    assert.are.equal(3, braid.now())
  end))
end)

describe("fuzz regressions (this session)", function()
  -- fuzz seeds 1771, 1797, 3896, after resources moved off timeout and
  -- shield scopes (issue 13.14): a server made inside braid.shield in a
  -- cancelled task spawned its handlers into the task's (cancelled) scope,
  -- so they were cancelled at their first wait and the round trip read nil.
  it("serves a round trip from inside braid.shield in a cancelled task", h.run(function()
    local got
    local t = braid.spawn(function()
      pcall(braid.sleep, 60)               -- cancelled here
      got = braid.shield(function()
        local server = braid.tcp.listen(nil, 0, function(conn)
          for line in conn:lines() do conn:write(line .. "\n") end
        end)
        local c = braid.tcp.connect("127.0.0.1", server:port())
        c:write("hi\n")
        local line = c:read_line()
        c:close()
        server:close()
        return line
      end)
    end)
    braid.yield()
    t:cancel()
    pcall(t.await, t)
    assert.are.equal("hi", got)
  end))
end)
