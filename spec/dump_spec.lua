local braid = require "braid"
local h = require "helper"

describe("braid.tasks", function()
  it("lists the live tasks, parents first", h.virtual(function()
    local ev = braid.event()
    local child
    local parent = braid.spawn(function()
      child = braid.spawn(function() ev:wait() end)
      ev:wait()
    end)
    braid.sleep(1)
    local list = braid.tasks()
    assert.are.same({braid.current(), parent, child}, list)
    assert.are.equal(parent, child.parent)
    ev:set()
  end))
end)

describe("braid.dump", function()
  it("returns the task tree with what each task waits on", h.virtual(function()
    local ch = braid.channel()
    local t = braid.spawn(function()
      braid.gather(function() ch:recv() end, function() braid.sleep(100) end)
    end)
    t.name = "pipeline"
    braid.sleep(2)
    local text = braid.dump()
    assert.matches('task %d+ "main" running', text)
    assert.matches('\n  task %d+ "pipeline" suspended, spawned at spec/dump_spec.lua:%d+, waits on its members', text)
    assert.matches('\n    %[group%]\n      task %d+ "[^"]+" suspended, spawned at [^\n]*, waits on channel recv for %d', text)
    assert.matches("waits on sleep for 2%.0 s", text)
    t:cancel()
    pcall(t.await, t)
  end))

  -- the buffer's slot moved once it had spilled into its box: a task
  -- line over ~1 KB made braid.dump raise "attempt to call a nil value"
  it("shows a task whose line is over 1 KB", h.virtual(function()
    local t = braid.spawn(braid.sleep, 1)
    t.name = ("n"):rep(5000)
    braid.yield()
    local text = braid.dump()
    assert.truthy(text:find('task %d+ "' .. t.name .. '" suspended'))
    t:cancel()
  end))

  -- each level was indented two spaces more: a 100000-deep chain made
  -- lines of 200 KB, 5.6 GB in all, then a stack overflow (recursion)
  it("lists a chain 5000 deep, lines past depth 32 saying their depth", h.virtual(function()
    local function walk(d)
      if d == 0 then braid.sleep(100) return end
      braid.spawn(walk, d - 1):await()
    end
    local t = braid.spawn(walk, 5000)
    braid.sleep(1)
    local text = braid.dump()
    assert.are.equal(5002, #braid.tasks())
    assert.are.equal(5002, select(2, text:gsub("\n", "")))
    assert.truthy(text:find("\n" .. (" "):rep(64) .. "%(depth 5001%) task %d+"))
    assert.is_true(#text < 5002 * 300)
    t:cancel()
  end))
end)

describe("a failure that reaches the top", function()
  it("is printed with the failing task, the chain it sat in and its traceback", function()
    local path = h.script([[
local function worker(i)
  braid.sleep(0.01 * i)
  if i == 2 then error("worker " .. i .. " broke") end
  braid.sleep(5)
end
braid.scope(function(s)
  local t = s:spawn(function()
    braid.gather(function() worker(1) end, function()
      local ok = pcall(braid.sleep, 5)
      error("secondary failure", 0)
    end, function() worker(2) end)
  end)
  t.name = "pipeline"
end)
]])
    local out, err, code = h.braid(path)
    os.remove(path)
    assert.are.equal(1, code)
    local lines = {}
    for l in err:gmatch("[^\n]+") do lines[#lines + 1] = l end
    -- the secondary error is reported as it happens, never dropped
    assert.matches("error while cancelling: secondary failure", err)
    -- then the first error, where it came from, the chain, the traceback
    assert.matches(":3: worker 2 broke\n  in task %d+ \"[^\"]+\", spawned at [^\n]+:8 %(in braid.gather/race/any/map%)\n" ..
                   "    inside task %d+ \"pipeline\", spawned at [^\n]+:7 %(in braid.scope%)\n" ..
                   "    inside task 1 \"" .. path:gsub("%p", "%%%0") .. "\"\nstack traceback:\n", err)
    assert.matches("in upvalue 'worker'", err)
    assert.matches("also raised while cancelling: secondary failure", err)
  end)
end)
