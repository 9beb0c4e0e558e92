-- progress_spec.lua: braid.progress, {progress = ...} on gather and map,
-- braid --progress: plain lines when stderr is not a terminal; on a
-- terminal (spec/pty_driver.py) one line redrawn at most 10 times a
-- second and cleared at the end, drawn above the REPL's prompt.
local braid = require "braid"
local h = require "helper"

local BIN = assert(os.getenv("BRAID_BIN"), "BRAID_BIN is not set (run spec/run)")
local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

local script = h.script

-- braid [args] script, stderr to a file (not a terminal): out, err, code
local function run(args, text)
  local p = script(text)
  local out, err, code = h.sh(RUN_ENV .. " timeout 30 '" .. BIN .. "' " .. args .. " " .. p .. " </dev/null")
  os.remove(p)
  return out, err, code
end

local function lines(s)
  local r = {}
  for l in s:gmatch("[^\n]+") do r[#r + 1] = l end
  return r
end

describe("braid.progress without a terminal", function()
  it("writes one line per tenth, and one at the end", function()
    local _, err, code = run("--virtual-time", [[
      local p = braid.progress(20, "loop")
      for i = 1, 20 do braid.sleep(0.5) p:add() end
      p:done()
      p:done()   -- twice is harmless
    ]])
    assert.equal(0, code, err)
    local l = lines(err)
    assert.equal(10, #l, err)
    assert.equal("loop: 10% (2/20) 1.0s", l[1])
    assert.equal("loop: 90% (18/20) 9.0s", l[9])
    assert.equal("loop: done 20/20 in 10.0s", l[10])
  end)

  -- an int wrapped past 2^31 s: "in -596523h-14m"
  it("shows times past 2^31 seconds", function()
    local _, err, code = run("--virtual-time", [[
      local p = braid.progress(10, "x")
      braid.sleep(3e9)
      p:add(5)
      p:done()
    ]])
    assert.equal(0, code, err)
    assert.equal("x: done 5/10 in 833333h20m", lines(err)[#lines(err)])
  end)

  it("counts failures, and ends with the task that made it", function()
    local _, err, code = run("--virtual-time", [[
      local t = braid.spawn(function()
        local p = braid.progress(4)
        p:add(2)
        p:fail()
        braid.sleep(1)
      end)   -- never p:done(): its scope ends it
      t:await()
      io.stderr:write("after\n")
    ]])
    assert.equal(0, code, err)
    assert.equal("50% (2/4) 0.0s\n75% (3/4) 0.0s\ndone 3/4, 1 failed in 1.0s\nafter\n", err)
  end)

  it("is drawn for gather and map with {progress = ...}", function()
    local _, err, code = run("--virtual-time", [[
      local r = braid.map({3, 1, 2}, function(x) braid.sleep(x) return x * 2 end,
                          {progress = "double"})
      assert(r[1] == 6 and r[2] == 2 and r[3] == 4)
      local ok, e = pcall(braid.gather, function() braid.sleep(1) error("bad") end,
                          function() braid.sleep(5) end, {progress = true})
      assert(not ok and tostring(e):match("bad"))
      braid.gather(function() end, {progress = false})
    ]])
    assert.equal(0, code, err)
    assert.equal(table.concat({
      "double: 33% (1/3) 1.0s", "double: 66% (2/3) 2.0s", "double: done 3/3 in 3.0s",
      "braid.gather: 50% (1/2) 1.0s", "braid.gather: done 1/2, 1 failed in 1.0s", ""}, "\n"), err)
  end)

  it("is drawn for every gather and map under braid --progress", function()
    local _, err, code = run("--progress --virtual-time", [[
      braid.map({1, 2}, function(x) braid.sleep(x) end)
      braid.gather(function() end, {progress = false})
    ]])
    assert.equal(0, code, err)
    assert.equal("braid.map: 50% (1/2) 1.0s\nbraid.map: done 2/2 in 2.0s\n", err)
  end)

  -- review-lua 8: the label was cut at 63 bytes in the middle of "é"
  it("cuts a long label at a character's start", function()
    local _, err, code = run("", [[
      braid.progress(2, ("é"):rep(40)):add(2)
      braid.gather(function() end, {progress = "x" .. ("é"):rep(40)})
    ]])
    assert.are.equal(0, code, err)
    assert.matches("\n" .. ("é"):rep(31) .. ": done 2/2", "\n" .. err, 1, true)
    assert.matches("\nx" .. ("é"):rep(31) .. ": done 1/1", "\n" .. err, 1, true)
  end)

  it("checks its arguments", h.run(function()
    for _, bad in ipairs({function() braid.progress() end,
                          function() braid.progress(-1) end,
                          function() braid.progress(3, {}) end,
                          function() braid.progress(3):add("x") end,
                          -- a fraction showed as "66% (1/2)"
                          function() braid.progress(1.5) end,
                          function() braid.progress(3):add(1.5) end}) do
      local ok, e = pcall(bad)
      assert.falsy(ok)
      assert.equal("usage", e.kind)
    end
    local ok, e = pcall(function()
      return braid.run(function() end) and braid.progress(1)
    end)
    assert.falsy(ok)
    local p = braid.progress(2)
    p:done()
  end))
end)

describe("braid.progress on a terminal", function()
  it("redraws at most 10 times a second and clears its line", function()
    local p = script([[
      local t0 = braid.now()
      local p = braid.progress(150, "steps")
      for i = 1, 150 do braid.sleep(0.004) p:add() end
      p:done()
      io.stderr:write(string.format("elapsed=%.3f\n", braid.now() - t0))
    ]])
    local out, ok, status = h.pty({{"expect", "elapsed=", "30"}, {"exit", "10"}}, p)
    os.remove(p)
    assert.is_true(ok, out)
    assert.equal(0, status, out)
    local elapsed = assert(tonumber(out:match("elapsed=([%d.]+)")), out)
    local draws = 0
    for _ in out:gmatch("steps %[") do draws = draws + 1 end
    -- the first draw, one per 100 ms at most, the last one (150/150)
    assert.truthy(draws >= 3, out)
    assert.truthy(draws <= math.floor(elapsed * 10) + 2, draws .. " draws in " .. elapsed .. " s")
    assert.truthy(out:find("steps [####################] 150/150", 1, true), out)
    -- cleared: the next output starts on the bar's line, wiped
    assert.truthy(out:find("150/150[^\n]*\\r\\x1b%[Kelapsed="), out)
  end)

  it("keeps the REPL's prompt below it while a background task draws", function()
    -- the second step waits for the scenario to have typed "1+" (a file it
    -- creates then), not for 0.3 s that a loaded machine may not keep; it
    -- then waits 0.15 s, so that it comes past the 0.1 s between redraws
    local flag = h.tmp()
    finally(function() os.remove(flag) end)
    local out, ok = h.pty({
      {"expect", "> $"},
      {"send", 'braid.spawn(function() local p = braid.progress(4, "bg") ' ..
               'braid.sleep(0.3) p:add() ' ..
               'while not braid.fs.exists("' .. flag .. '") do braid.sleep(0.01) end ' ..
               'braid.sleep(0.15) p:add() ' ..   -- past the 0.1 s between redraws
               'for i = 3, 4 do braid.sleep(0.3) p:add() end p:done() end)\\r'},
      {"expect", "bg \\[#####-+\\] 1/4[^\\n]*\\r\\n> $", "10"},
      {"send", "1+"},
      {"expect", "1\\+$", "10"},
      {"touch", flag},
      {"expect", "bg \\[##########-+\\] 2/4[^\\n]*\\r\\n> 1\\+$", "10"},
      {"send", "1\\r"},
      {"expect", "\\r\\n2\\r\\n", "10"},
      -- the end: the line above the prompt is wiped, the prompt drawn there
      {"expect", "4/4[^\\n]*\\r\\n> \\r\\x1b\\[J\\x1b\\[A\\r\\x1b\\[K> $", "10"},
      {"send", "\\x04"},
      {"exit", "10"},
    }, "")
    assert.is_true(ok, out)
  end)
end)
