local braid = require "braid"
local h = require "helper"

describe("braid.spawn", function()
  it("runs the function with its arguments and await returns all results", h.run(function()
    local t = braid.spawn(function(a, b) return a + b, "two", nil end, 20, 22)
    local a, b, c = t:await()
    assert.are.equal(42, a)
    assert.are.equal("two", b)
    assert.is_nil(c)
    assert.are.equal(3, select("#", t:await()))
  end))

  it("schedules tasks instead of running them inline, in spawn order", h.run(function()
    local log = {}
    local a = braid.spawn(function() log[#log + 1] = "a" end)
    local b = braid.spawn(function() log[#log + 1] = "b" end)
    log[#log + 1] = "spawner"
    a:await(); b:await()
    assert.are.same({"spawner", "a", "b"}, log)
  end))

  it("re-raises the task's error as the same value, and fails its scope with it", h.run(function()
    local err = {"mine"}
    local ok, e2 = pcall(braid.scope, function(s)
      local t = s:spawn(function() error(err) end)
      local ok, e = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(rawequal(err, e))
    end)
    assert.is_false(ok)
    assert.is_true(rawequal(err, e2))
  end))

  it("reports status through the task's life", h.run(function()
    local ev = {}
    local t = braid.spawn(function() braid.sleep(0.01) end)
    assert.are.equal("pending", t:status())
    braid.yield()
    assert.are.equal("suspended", t:status())
    t:await()
    assert.are.equal("ok", t:status())
    assert.is_true(t:done())
    assert.are.same({true}, {t:result()})
    local cur
    local u = braid.spawn(function() cur = braid.current():status() end)
    u:await()
    assert.are.equal("running", cur)
  end))

  it("returns false from cancel of an ended task", h.run(function()
    local t = braid.spawn(function() return 1 end)
    t:await()
    assert.is_false(t:cancel())
  end))

  it("gives tasks ids, names and parents", h.run(function()
    local root = braid.current()
    local t = braid.spawn(function() end)
    assert.is_number(t.id)
    assert.are.equal(root, t.parent)
    assert.matches("task_spec.lua:%d+", t.name)
    t.name = "fetch"
    assert.are.equal("fetch", t.name)
    assert.matches('<task %d+ "fetch"', tostring(t))
    t:await()
  end))

  it("refuses a name with a zero byte inside (reports carry C strings), keeping the old one", h.run(function()
    local t = braid.spawn(function() end)
    t.name = "fetch"
    local ok, e = pcall(function() t.name = "a\0b" end)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("task.name: a name with a zero byte inside", e.message, 1, true)
    assert.are.equal("fetch", t.name)
    t:await()
  end))
end)

describe("braid calls outside a task", function()
  it("raise a usage error naming the function", function()
    local ok, e = pcall(braid.sleep, 1)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("braid.sleep: not inside a braid task", e.message)
    ok, e = pcall(braid.spawn, print)
    assert.are.equal("usage", e.kind)
  end)

  it("refuse a nested braid.run", h.run(function()
    local ok, e = pcall(braid.run, function() end)
    assert.is_false(ok)
    assert.matches("already running", e.message)
  end))
end)

-- Finishing a task finished its parent (the last member of the parent's
-- scope ended) by recursion, each level holding a slot of the scheduler's
-- stack: a chain of 40 nested tasks ending from the leaf up wrote past its
-- end (heap corruption, SIGSEGV), also when cancelled or failing fast. And
-- each level's cancel looked its grace period up through every level above
-- (20000 levels took 6 s, 100000 minutes), again as soon as any scope had
-- a grace period of its own; abandoning a task abandoned its members by
-- recursion, and a chain of 50000 overflowed the C stack. In a child
-- process: a crash
-- must fail this spec, not end the spec runner.
describe("a chain of nested tasks", function()
  local script = h.script([[
    local how, depth = arg[1], tonumber(arg[2])
    local function chain(d)   -- each level returns; its scope waits
      if d == 0 then braid.sleep(0.01) return end
      braid.spawn(chain, d - 1)
    end
    local function walk(d)    -- each level awaits the next
      if d == 0 then braid.sleep(10) return 0 end
      return 1 + braid.spawn(walk, d - 1):await()
    end
    if how == "end" then chain(depth) print("ended")
    elseif how == "timeout" then print(select(2, pcall(braid.timeout, 0.2, walk, depth)))
    elseif how == "abandon" then  -- each level waits shielded: abandoned
      local function shielded(d)
        if d == 0 then braid.shield(braid.sleep, 10) return end
        local t = braid.spawn(shielded, d - 1)
        braid.shield(function() t:await() end)
      end
      print(select(2, pcall(braid.scope, function(s)
        s:spawn(shielded, 2 * depth)   -- 100000 levels fitted the old stack
        braid.sleep(0.2)
        s:cancel("stop")
      end, {grace = 0.3})) == nil and "abandoned")
    elseif how == "graced" then   -- nested gathers, and a scope elsewhere
      for i = 1, 100 do           -- graces of scopes long ended
        braid.scope(function() end, {grace = 1 + i / 1000})
      end
      braid.spawn(braid.scope, function() braid.sleep(3) end, {grace = 1})
      local function nest(d)      -- with a grace period of its own
        if d == 0 then braid.sleep(10) return end
        braid.gather(function() nest(d - 1) end)
      end
      print(select(2, pcall(braid.timeout, 2, nest, depth)))
    else
      print(select(2, pcall(braid.gather, function() return walk(depth) end,
                            function() braid.sleep(0.2) error("boom", 0) end)))
    end
  ]])
  teardown(function() os.remove(script) end)

  -- the report walked the tree by recursion: 200000 levels overflowed the
  -- C stack; it lists the first 1000 tasks and counts the rest
  it("of 200000 levels deadlocked is reported, its first 1000 tasks", function()
    local dl = h.script([[
      local ch = braid.channel()
      local function wait(d)
        if d == 0 then return ch:recv() end
        return braid.spawn(wait, d - 1):await()
      end
      wait(200000)
    ]])
    local _, err, code = h.sh("timeout 60 " .. os.getenv("BRAID_BIN") .. " " .. dl)
    os.remove(dl)
    assert.are.equal(1, code, err)
    assert.truthy(err:find("deadlock: every task is waiting", 1, true), err:sub(1, 300))
    assert.truthy(err:find("\n  ... and 199001 more tasks", 1, true), err:sub(-300))
  end)
  for _, case in ipairs({{"end", "ended"}, {"timeout", "timed out after 0.2 s"},
                         {"graced", "timed out after 2 s"}, {"fail", "boom"},
                         {"abandon", "abandoned"}}) do
    it("of 100000 levels ends from the leaf up: " .. case[1], function()
      local out, err, code = h.sh("timeout 60 " .. os.getenv("BRAID_BIN") .. " " ..
                                  script .. " " .. case[1] .. " 100000")
      assert.are.equal(0, code, err)
      assert.are.equal(case[2] .. "\n", out)
    end)
  end
end)
