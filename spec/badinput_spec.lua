-- spec/badinput_spec.lua: every public function given wrong types, nil,
-- NaN, negative and huge numbers raises a clear error (a braid.Error of kind
-- "usage" naming the function, or Lua's own "bad argument" where Lua checks
-- the argument) -- never a crash or a hang. Also: braid calls where Lua
-- cannot yield, 10k nested gathers, and hostile error values and scripts
-- given to the runner.
local braid = require "braid"
local h = require "helper"

local NAN, HUGE = 0 / 0, math.huge

-- Asserts that f(...) raises a usage error whose message names fname.
local function usage(fname, f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, fname .. " accepted bad input")
  assert.is_true(braid.is_error(e), fname .. " raised " .. tostring(e))
  assert.are.equal("usage", e.kind)
  assert.is_truthy(e.message:find(fname, 1, true), e.message)
end

-- Asserts that f(...) raises a clean error (braid usage or Lua's "bad
-- argument") that names fname.
local function rejects(fname, f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, fname .. " accepted bad input")
  if braid.is_error(e) then
    assert.are.equal("usage", e.kind)
    e = e.message
  end
  assert.are.equal("string", type(e))
  assert.is_truthy(e:find("bad argument", 1, true), e)
  assert.is_truthy(e:find(fname, 1, true), e)
end

local function fn() end

describe("bad input", function()
  it("braid.spawn, sleep and timeout", h.virtual(function()
    for _, v in ipairs({NAN, 1, "x", {}, true}) do usage("spawn", braid.spawn, v) end
    usage("spawn", braid.spawn)
    for _, v in ipairs({"x", {}, true, fn}) do usage("sleep", braid.sleep, v) end
    usage("sleep", braid.sleep)
    usage("sleep", braid.sleep, NAN)
    braid.sleep(-1)                       -- negative: no wait
    assert.are.equal(0, braid.now())
    usage("timeout", braid.timeout, NAN, fn)
    usage("timeout", braid.timeout, "x", fn)
    usage("timeout", braid.timeout, nil, fn)
    rejects("timeout", braid.timeout, 1)
    rejects("timeout", braid.timeout, 1, 42)
    assert.are.equal(7, braid.timeout(HUGE, function() return 7 end))
    assert.are.equal(7, braid.timeout(1e300, function() return 7 end))
    local ok, e = pcall(braid.timeout, -5, braid.sleep, 1)
    assert.is_true(braid.is_timeout(e))
  end))

  it("gather, race, any and map: members and options", h.virtual(function()
    for _, name in ipairs({"gather", "race", "any"}) do
      local f = braid[name]
      for _, v in ipairs({NAN, 1, "x", true}) do usage(name, f, v) end
      usage(name, f, fn, nil, fn)
      usage(name, f, fn, {limit = 0})
      usage(name, f, fn, {limit = -1})
      usage(name, f, fn, {limit = 1.5})
      usage(name, f, fn, {limit = NAN})
      usage(name, f, fn, {limit = HUGE})
      usage(name, f, fn, {limit = "2.5"})
      usage(name, f, fn, {timeout = NAN})
      usage(name, f, fn, {timeout = "x"})
      usage(name, f, fn, {timeout = {}})
      usage(name, f, fn, {grace = "x"})
      usage(name, f, fn, {grace = NAN})
      usage(name, f, fn, {bogus = 1})
      usage(name, f, fn, {[1] = 1})
    end
    local ok, e = pcall(braid.gather, function() braid.sleep(1) end, {timeout = -1})
    assert.is_true(braid.is_timeout(e))
    local n = 0
    local function count() n = n + 1; braid.sleep(1) end
    braid.gather(count, count, count, {limit = 1 << 32 | 1})   -- no wrap-around to 1
    assert.are.equal(1, braid.now())
    braid.gather(count, {limit = math.maxinteger})
    rejects("map", braid.map, nil, fn)
    rejects("map", braid.map, 5, fn)
    usage("map", braid.map, {}, nil)
    usage("map", braid.map, {}, 5)
    usage("map", braid.map, {}, fn, 5)
    usage("map", braid.map, {1}, fn, {limit = 0})
    usage("map", braid.map, {1}, fn, {timeout = NAN})
  end))

  it("a task cannot wait for itself", h.run(function()
    usage("gather", braid.gather, braid.current())
    usage("race", braid.race, braid.current())
  end))

  it("scope, shield and run", h.virtual(function()
    for _, v in ipairs({NAN, 1, "x", {}}) do
      rejects("scope", braid.scope, v)
      rejects("shield", braid.shield, v)
    end
    rejects("scope", braid.scope)
    rejects("shield", braid.shield)
    usage("scope", braid.scope, fn, 5)
    usage("scope", braid.scope, fn, {grace = NAN})
    usage("scope", braid.scope, fn, {grace = {}})
    usage("scope", braid.scope, fn, {bogus = true})
    braid.scope(function(s)
      usage("spawn", s.spawn, s, 42)
      usage("spawn", s.spawn, s)
      rejects("braid.Scope expected", s.spawn, 42, fn)
      rejects("braid.Scope expected", s.cancel, nil)
    end)
    usage("run", braid.run, fn)          -- already running
  end))

  it("braid.run outside a task", function()
    usage("run", braid.run)
    usage("run", braid.run, 42)
    usage("run", braid.run, fn, 5)
    usage("run", braid.run, fn, {clock = "x"})
    usage("run", braid.run, fn, {grace = "x"})
    usage("run", braid.run, fn, {grace = NAN})
    usage("run", braid.run, fn, {bogus = 1})
    for _, name in ipairs({"sleep", "spawn", "gather", "race", "any", "scope", "shield", "yield"}) do
      local ok, e = pcall(braid[name], fn)
      assert.are.equal("usage", e.kind)
      assert.matches("not inside a braid task", e.message)
    end
  end)

  it("channel, semaphore and event constructors", h.run(function()
    usage("channel", braid.channel, -1)
    rejects("channel", braid.channel, -HUGE)
    rejects("channel", braid.channel, "x")
    rejects("channel", braid.channel, NAN)
    rejects("channel", braid.channel, HUGE)
    rejects("channel", braid.channel, 1.5)
    rejects("semaphore", braid.semaphore)
    usage("semaphore", braid.semaphore, -1)
    rejects("semaphore", braid.semaphore, NAN)
    rejects("semaphore", braid.semaphore, HUGE)
    rejects("semaphore", braid.semaphore, 0.5)
    rejects("semaphore", braid.semaphore, {})
    usage("semaphore", braid.semaphore, 1, {max = 1.5})   -- was taken as 1
    assert.are.equal(0, braid.semaphore(0, {max = HUGE}):count())
    assert.is_false(braid.event():is_set())
  end))

  it("methods called on the wrong object", h.run(function()
    local t = braid.spawn(fn)
    local ch, sem, ev = braid.channel(1), braid.semaphore(1), braid.event()
    local cases = {
      {t, {"await", "cancel", "status", "done", "result"}, "braid.Task"},
      {ch, {"send", "recv", "close", "iter", "len"}, "braid.Channel"},
      {sem, {"acquire", "release", "count"}, "braid.Semaphore"},
      {ev, {"set", "wait", "is_set"}, "braid.Event"},
    }
    for _, c in ipairs(cases) do
      local obj, methods, tname = c[1], c[2], c[3]
      for _, m in ipairs(methods) do
        for _, bad in ipairs({nil, 42, "x", {}, NAN, ch == obj and sem or ch}) do
          local ok, e = pcall(obj[m], bad)
          assert.is_false(ok, m .. " accepted " .. tostring(bad))
          e = braid.is_error(e) and e.message or e
          assert.is_truthy(tostring(e):find(tname .. " expected", 1, true), tostring(e))
        end
      end
    end
    usage("with", sem.with, sem, nil)
    usage("with", sem.with, sem, 42)
    assert.are.equal(1, sem:count())     -- nothing was acquired
    t:await()
  end))

  it("task:result on a task that has not ended", h.run(function()
    local t = braid.spawn(fn)
    usage("result", t.result, t)
    t:await()
    assert.is_true(t:result())
  end))
end)

describe("braid calls where Lua cannot yield", function()
  local boundary = "cannot suspend here"

  it("raise an error naming the boundary in __tostring, sort and gsub", h.virtual(function()
    local ok, e = pcall(tostring, setmetatable({}, {__tostring = function() braid.sleep(1) return "" end}))
    assert.matches(boundary, e.message)
    assert.matches("braid.sleep", e.message)
    ok, e = pcall(table.sort, {3, 2, 1}, function(a, b) braid.yield() return a < b end)
    assert.matches(boundary, e.message)
    ok, e = pcall(string.gsub, "ab", ".", function(c) braid.gather(fn) return c end)
    assert.matches(boundary, e.message)
    ok, e = pcall(string.gsub, "ab", ".", function(c) braid.scope(fn) return c end)
    assert.matches(boundary, e.message)
    ok, e = pcall(table.sort, {3, 2, 1}, function(a, b) braid.timeout(1, fn) return a < b end)
    assert.matches(boundary, e.message)
    local ch = braid.channel(1)
    ok, e = pcall(string.gsub, "ab", ".", function(c) ch:recv() return c end)
    assert.matches(boundary, e.message)
  end))

  it("raise an error naming the boundary in __gc", h.virtual(function()
    local seen
    do
      setmetatable({}, {__gc = function() seen = select(2, pcall(braid.sleep, 1)) end})
    end
    collectgarbage(); collectgarbage()
    assert.are.equal("usage", seen.kind)
    assert.matches(boundary, seen.message)
  end))

  it("work in __close, which Lua 5.4 lets yield", h.virtual(function()
    local slept
    do
      local c <close> = setmetatable({}, {__close = function() braid.sleep(2); slept = braid.now() end})
    end
    assert.are.equal(2, slept)
  end))
end)

describe("deep nesting", function()
  -- 10k gathers, each inside a member of the one above: each level is its
  -- own task, so no C stack is consumed per level.
  it("runs a gather nested 10000 levels deep", h.virtual(function()
    local function nest(n)
      if n == 0 then braid.sleep(1) return "bottom" end
      return (braid.gather(function() return nest(n - 1) end))
    end
    assert.are.equal("bottom", nest(10000))
  end))

  it("cancels a gather nested 10000 levels deep, running every <close> once", h.virtual(function()
    local closed = 0
    local function nest(n)
      local c <close> = setmetatable({}, {__close = function() closed = closed + 1 end})
      if n == 0 then braid.sleep(100) return end
      braid.gather(function() return nest(n - 1) end)
    end
    local ok, e = pcall(braid.timeout, 1, nest, 10000)
    assert.is_true(braid.is_timeout(e))
    assert.are.equal(10001, closed)
  end))
end)

describe("the runner given hostile input", function()
  it("exits 1 when the error's __tostring itself raises", function()
    local p = h.script([[
      error(setmetatable({}, {__tostring = function() error("tostring exploded") end}))
    ]])
    local out, err, code = h.braid(p)
    os.remove(p)
    assert.are.equal(1, code)
    assert.matches("__tostring failed", err)
  end)

  it("exits 1 when a child's error has a __tostring raising an unprintable error", function()
    local p = h.script([[
      local bad = setmetatable({}, {__tostring = function() error({}) end})
      braid.spawn(function() error(setmetatable({}, {__tostring = function() error(bad) end})) end)
    ]])
    local out, err, code = h.braid(p)
    os.remove(p)
    assert.are.equal(1, code)
    assert.matches("__tostring failed", err)
  end)

  it("keeps an error with a failing __tostring raised while cancelling", function()
    local p = h.script([[
      braid.gather(function() braid.sleep(0.01) error("first", 0) end,
                   function()
                     pcall(braid.sleep, 10)
                     error(setmetatable({}, {__tostring = function() error("no") end}))
                   end)
    ]])
    local out, err, code = h.braid(p)
    os.remove(p)
    assert.are.equal(1, code)
    assert.matches("first", err)
    assert.matches("__tostring failed", err)
  end)

  it("exits 1 with a message for binary junk", function()
    local junk = {}
    math.randomseed(7)
    for i = 1, 4096 do junk[i] = string.char(math.random(0, 255)) end
    local p = h.script(table.concat(junk))
    local out, err, code = h.braid(p)
    assert.are.equal(1, code)
    assert.matches("^braid: ", err)
    local f = assert(io.open(p, "wb"))
    f:write("\27Lua\84\0 not a real chunk")
    f:close()
    out, err, code = h.braid(p)
    os.remove(p)
    assert.are.equal(1, code)
    assert.matches("^braid: ", err)
  end)

  it("runs a script holding bytes that are not UTF-8 in strings", function()
    local p = h.script('io.write("\255\254caf\233")')
    local out, err, code = h.braid(p)
    os.remove(p)
    assert.are.equal(0, code)
    assert.are.equal("\255\254caf\233", out)
  end)

  it("braid.run refuses a seed that is not an integer", function()
    local ok, e = pcall(braid.run, function() end, {seed = "x"})
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("bad option 'seed' to 'braid.run'", e.message, 1, true)
  end)
end)

describe("usage errors raised on braid's Lua side", function()
  -- Each case is {name, function, line}: the call and `line` on one line,
  -- so that line is the one the message must start with.
  local function line() return debug.getinfo(2, "l").currentline end
  local src = debug.getinfo(1, "S").short_src

  it("start with the position of the script's line, as C-side ones do",
     h.run(function()
    local d <close> = braid.fs.tmpdir()
    local cases = {
      {"braid.semaphore", function() braid.semaphore("x") end, line()},  -- C
      {"braid.pool", function() braid.pool(0, "x") end, line()},
      {"braid.fs.mkdir", function() braid.fs.mkdir(d .. "/a/b", {parents = true, mode = NAN}) end, line()},
      {"braid.fs.tmpdir", function() braid.fs.tmpdir("a/b") end, line()},
      {"braid.fs.tmpdir", function() braid.fs.tmpdir("\0") end, line()},
      {"braid.http.get", function() braid.http.get(1) end, line()},
      {"braid.http.post", function() braid.http.post("http://127.0.0.1:1/", "", 1) end, line()},
      {"braid.json.decode", function() braid.json.decode(1) end, line()},
      {"braid.map", function() braid.map({1}, "f", {}) end, line()},
      -- braid.worker's check, handed on: said as the call the script made
      {"bad argument #2 to 'braid.pool'", function() braid.pool(1, {}) end, line()},
    }
    for _, c in ipairs(cases) do
      local ok, e = pcall(c[2])
      assert.is_false(ok, c[1])
      assert.is_true(braid.is_error(e), tostring(e))
      assert.are.equal("usage", e.kind)
      local where = src .. ":" .. c[3] .. ": "
      assert.are.equal(where, e.message:sub(1, #where), e.message)
      assert.is_truthy(e.message:find(c[1], 1, true), e.message)
    end
  end))
end)
