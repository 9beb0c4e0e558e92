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

describe("issue 13.14: a resource belongs to the nearest task or braid.scope", function()
  it("returns an open stream from inside braid.timeout (it was closed)", h.run(function()
    local server = braid.tcp.listen("127.0.0.1", 0, function(conn)
      for line in conn:lines() do conn:write(line .. "!\n") end
    end)
    local c = braid.timeout(5, function() return braid.tcp.connect("127.0.0.1", server:port()) end)
    c:write("hi\n")
    assert.are.equal("hi!", c:read_line())
    c:close()
    server:close()
  end))

  it("returns a running process from inside braid.shield and braid.timeout (it was stopped)", h.run(function()
    local p <close> = braid.shield(function() return braid.process({"cat"}) end)
    p:write("x\n")
    assert.are.equal("x", p:read_line())
    local q <close> = braid.timeout(5, function() return braid.process({"cat"}) end)
    q:write("y\n")
    assert.are.equal("y", q:read_line())
  end))

  it("still closes what a braid.scope made when that scope ends", h.run(function()
    local p
    braid.scope(function()
      p = braid.timeout(5, function() return braid.process({"cat"}) end)
    end)
    local ok, e = pcall(p.write, p, "z\n")
    assert.is_false(ok)
    assert.are.equal("closed", e.kind)
  end))
end)

describe("issue 13.15: the runner under a low address-space limit", function()
  -- ulimit -v leaves AddressSanitizer no room to start: plain build only.
  local asan = (os.getenv("BRAID_RUN_ENV") or ""):find("ASAN") ~= nil
  local spawn_many = h.script([[
    local ch = braid.channel(0)
    for i = 1, 1e6 do braid.spawn(function() ch:send(string.rep("x", 100)) end) end
  ]])
  local gather_many = h.script([[
    local f = {}
    for i = 1, 2e5 do f[i] = function() braid.sleep(0.001) return {i} end end
    braid.gather(table.unpack(f))
  ]])
  for _, kb in ipairs({60000, 80000, 100000, 120000}) do
    it("fails the script with a memory error, never 'fatal error in the scheduler' (ulimit -v " .. kb .. ")", function()
      if asan then pending("not under AddressSanitizer") return end
      for _, script in ipairs({spawn_many, gather_many}) do
        local _, err, code = h.sh("ulimit -v " .. kb .. "; timeout 60 " .. os.getenv("BRAID_BIN") .. " " .. script)
        assert.are.equal(1, code, err)
        assert.is_nil(err:find("fatal"), err)
        assert.truthy(err:find("not enough memory", 1, true), err)
      end
    end)
  end
end)
