-- spec/hardening_spec.lua: the reproductions of issue 13 (an adversarial
-- review): each `describe` names the item, each `it` the symptom that was
-- reproduced on main before the fix.
local braid = require "braid"
local h = require "helper"

describe("issue 13.1: many results or arguments", function()
  it("hands 300 results of a task to await (it segfaulted)", h.run(function()
    local t = braid.spawn(function() return table.unpack({}, 1, 300) end)
    local r = table.pack(t:await())
    assert.are.equal(300, r.n)
  end))

  it("starts a task with 300 arguments, and with 100000 (it segfaulted)", h.run(function()
    local t = braid.spawn(function(...) return select("#", ...), (select(300, ...)) end,
                          table.unpack({[300] = "last"}, 1, 300))
    local n, last = t:await()
    assert.are.equal(300, n)
    assert.are.equal("last", last)
    local args = {}
    for i = 1, 100000 do args[i] = i end
    t = braid.spawn(function(...) return select("#", ...) end, table.unpack(args))
    assert.are.equal(100000, t:await())
  end))

  it("gathers 300 members of 300 results each", h.run(function()
    local fns = {}
    for i = 1, 300 do fns[i] = function() return table.unpack({}, 1, 300) end end
    assert.are.equal(300, select("#", braid.gather(table.unpack(fns))))
  end))

  it("does so in the runner too", function()
    local out, err, code = h.braid([[-e 'local t = braid.spawn(function() return table.unpack({}, 1, 300) end) print(select("#", t:await()))']])
    assert.are.equal(0, code, err)
    assert.are.equal("300\n", out)
  end)
end)

describe("issue 13.2: a scope is entered only after everything that can fail", function()
  it("leaves the task usable when braid.map's list has a bad length (use-after-free)", h.run(function()
    local bad = setmetatable({}, {__len = function() return -1 end})
    local ok, e = pcall(braid.map, bad, print)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    -- the task's innermost scope is intact: spawning and waiting work
    collectgarbage()
    assert.are.equal(7, braid.spawn(function() return 7 end):await())
    assert.are.same({1, 2, n = 2}, braid.map({1, 2}, function(x) return x end))
  end))

  it("leaves the task usable when a __len raises inside braid.map", h.run(function()
    local bad = setmetatable({}, {__len = function() error("no length") end})
    assert.is_false(pcall(braid.map, bad, print))
    collectgarbage()
    assert.are.equal(3, braid.scope(function() return 3 end))
  end))
end)
