-- spec/arena_spec.lua: the arena behind braid's Lua states
-- (engine/core/arena.c). Each case runs in a fresh process with
-- BRAID_ARENA=1 (on under AddressSanitizer too, which then poisons its free
-- blocks) and ends with a normal exit, so lua_close frees every block.
local h = require "helper"

-- Blocks of every small size class and across the 1 KB line to malloc's,
-- grown and shrunk, from many tasks; prints a checksum of what survived.
local churn = [[
local braid = rawget(_G, "braid") or require "braid"
kept = kept or {}
local function work(i)
  local s, t = "", {}
  for k = 1, 40 do
    s = s .. string.char(65 + (i + k) % 26):rep(k)   -- 1 .. 820 bytes, growing
    t[k] = s:sub(1, (i * k) % 1100 + 1)               -- up to 1100: both sides
  end
  for k = 40, 1, -1 do if k % 3 ~= 0 then t[k] = nil end end   -- shrinks
  local sum = #s
  for _, v in pairs(t) do sum = sum + #v + v:byte(1) end
  kept[#kept + 1] = t   -- outlives the run (and, in the module, the engine)
  return sum
end
local total = 0
local function main()
  local tasks = {}
  for i = 1, 2000 do tasks[i] = braid.spawn(work, i) end
  for i = 1, 2000 do total = total + tasks[i]:await() end
end
if braid.run and not rawget(_G, "braid") then braid.run(main) else main() end
print("sum " .. total)
]]

local write = h.script

describe("the arena", function()
  it("gives the runner the same results as malloc (BRAID_ARENA=0)", function()
    local p = write(churn)
    local on, err1, c1 = h.braid(p)
    local env = os.getenv("BRAID_RUN_ENV") or ""
    local off, err2, c2 = h.sh(env .. " BRAID_ARENA=0 " .. os.getenv("BRAID_BIN") .. " " .. p)
    local forced, err3, c3 = h.sh(env .. " BRAID_ARENA=1 " .. os.getenv("BRAID_BIN") .. " " .. p)
    os.remove(p)
    assert.are.equal(0, c1, err1)
    assert.are.equal(0, c2, err2)
    assert.are.equal(0, c3, err3)
    assert.truthy(on:match("^sum %d+\n$"), on)
    assert.are.equal(on, off)
    assert.are.equal(on, forced)
  end)

  -- braid.run adopts stock lua5.4's allocator; the arena must outlive the
  -- run, serve a second run, and outlive the engine (its box is collected
  -- at lua_close, before the objects are freed) and lua_close's unloading
  -- of braid.so, with every block freed by the right allocator to the last.
  it("lives in stock lua5.4 from braid.run until lua_close", function()
    local p = write(churn)
    local driver = write(([[
      local p = %q
      dofile(p)                                    -- adopted by braid.run
      local after = {}
      for i = 1, 5000 do after[i] = ("after"):rep(i %% 300) end   -- arena, no run
      collectgarbage()
      for i = 1, 5000 do after[i] = ("again"):rep(i %% 300) end
      after = nil
      dofile(p)                                    -- a second run, same arena
      local n = 0
      for _, t in ipairs(kept) do for _, v in pairs(t) do n = n + #v end end
      print("kept " .. #kept .. " " .. n)
    ]]):format(p))
    local out, err, code = h.sh("BRAID_ARENA=1 lua5.4 " .. driver)
    os.remove(p)
    os.remove(driver)
    assert.are.equal(0, code, err)
    local s1, s2, k = out:match("^sum (%d+)\nsum (%d+)\nkept (%d+) %d+\n$")
    assert.truthy(s1, out)
    assert.are.equal(s1, s2)
    assert.are.equal("4000", k)
  end)

  -- The arena's regions are advised MADV_HUGEPAGE: "hg" in smaps' VmFlags.
  it("takes BRAID_ARENA as 0/1, off/on, no/yes, false/true; warns once of any other value, keeping the default", function()
    local p = write([[
      local t = {} for i = 1, 1e5 do t[i] = {} end
      local n = 0
      for l in io.lines("/proc/self/smaps") do
        if l:match("^VmFlags:.* hg") then n = n + 1 end
      end
      print(n > 0 and "on" or "off")
    ]])
    local env = os.getenv("BRAID_RUN_ENV") or ""
    -- under AddressSanitizer the arena is off unless asked for
    local default = env:find("ASAN") and "off" or "on"
    local function arena(v)
      local out, err, code = h.sh(env .. " BRAID_ARENA=" .. v .. " " .. os.getenv("BRAID_BIN") .. " " .. p)
      assert.are.equal(0, code, err)
      return out:gsub("\n$", ""), err
    end
    for _, v in ipairs{"0", "off", "no", "false", "OFF"} do
      local state, err = arena(v)
      assert.are.equal("off", state, v)
      assert.are.equal("", err, v)
    end
    for _, v in ipairs{"1", "on", "yes", "true", "True"} do
      local state, err = arena(v)
      assert.are.equal("on", state, v)
      assert.are.equal("", err, v)
    end
    assert.are.equal(default, (arena("''")))
    for _, v in ipairs{"00", "maybe"} do
      local state, err = arena(v)
      assert.are.equal(default, state, v)
      assert.are.equal("braid: ignoring BRAID_ARENA=" .. v ..
                       " (not 0/1, off/on, no/yes, false/true)\n", err)
    end
    os.remove(p)
  end)

  it("is off with BRAID_ARENA=0 in the module too", function()
    local p = write(churn)
    local out, err, code = h.sh("BRAID_ARENA=0 lua5.4 " .. p)
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.truthy(out:match("^sum %d+\n$"), out)
  end)
  -- Out of address space, memory freed in one size class must serve
  -- another: Lua runs a full emergency collection on every refused
  -- allocation, so a class that can never be served again made a script
  -- at its limit crawl (20 s instead of 1 to fail under ulimit -v).
  it("serves a size class from the free blocks of another when no region can be mapped", function()
    if (os.getenv("BRAID_RUN_ENV") or ""):find("ASAN") then
      pending("ulimit -v leaves AddressSanitizer no room to start") return
    end
    local p = write([[
      local u = {}                       -- made first: it must not grow later
      for i = 1, 600000 do u[i] = false end
      local t, n = {}, 0
      for i = 1, 600000 do t[i] = false end
      local ok = pcall(function()        -- fill memory: a 56- and a 128-byte block each
        while n < 600000 do n = n + 1; t[n] = {n, n, n, n, n, n, n, n} end
      end)
      assert(not ok, "memory did not run out")
      local filled = n
      for i = 1, n do t[i] = false end
      collectgarbage()
      local m = 0
      ok = pcall(function()              -- then 45-byte strings, a class of their own
        while m < filled do m = m + 1; u[m] = ("%020d"):format(m) end
      end)
      print(("filled %d tables, then %d strings"):format(filled, m))
    ]])
    local out, err, code = h.sh("ulimit -v 80000; BRAID_ARENA=1 timeout 60 " ..
                                os.getenv("BRAID_BIN") .. " " .. p)
    os.remove(p)
    assert.are.equal(0, code, err)
    local filled, strings = out:match("filled (%d+) tables, then (%d+) strings")
    assert.truthy(filled, out .. err)
    -- the strings fit in what the tables gave back (each table left two
    -- free blocks of other classes, each big enough for a string)
    assert.is_true(tonumber(strings) >= tonumber(filled) // 2,
                   out .. " (the strings could not use the tables' memory)")
  end)
end)
