-- fault_spec.lua: libuv errors injected from outside (issue 7, fault
-- injection): descriptors exhausted by a low `ulimit -n`, a refused
-- connection inside a gather, programs that cannot start. Allocation
-- failures are tests/fault_test.c's (make faultsweep).
local braid = require "braid"
local h = require "helper"

-- Runs `script` with build/braid under `ulimit -n <limit>`, bounded by
-- `timeout 60`; returns stdout, stderr, exit status.
local function run_limited(limit, script)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local out, err, code = h.sh("ulimit -n " .. limit .. "; " ..
                              (os.getenv("BRAID_RUN_ENV") or "") ..
                              " timeout 60 " .. os.getenv("BRAID_BIN") ..
                              " " .. path .. " </dev/null")
  os.remove(path)
  return out, err, code
end

-- One gather per kind of descriptor: many children each start a thing that
-- holds descriptors (a connection, a process) until some fail with EMFILE;
-- for file reads, connections made beforehand hold every descriptor. Every child ends cancelled or with that error naming its
-- operation; afterwards, with the descriptors closed, each kind works
-- again; then the first error is raised, so the exit status is 1.
local EMFILE_SCRIPT <const> = [[
local fs = braid.fs
local srv = braid.tcp.listen("127.0.0.1", 0, function(s) s:read() end)
local ops = {
  ["tcp.connect"] = function()
    local c <close> = braid.tcp.connect("127.0.0.1", srv:port())
    braid.sleep(60)
  end,
  ["process"] = function()
    local p <close> = braid.process({"cat"})
    braid.sleep(60)
  end,
  ["braid.fs.read_file"] = function(i)
    if i % 2 == 0 then fs.read_file("/dev/null") end
    braid.sleep(60)
  end,
}
local first
for _, name in ipairs({"tcp.connect", "process", "braid.fs.read_file"}) do
  local outcome, fns, held = {}, {}, {}
  if name == "braid.fs.read_file" then   -- no descriptor left for a file
    while true do
      local ok, c = pcall(braid.tcp.connect, "127.0.0.1", srv:port())
      if not ok then break end
      held[#held + 1] = c
    end
  end
  for i = 1, 40 do
    fns[i] = function()
      local ok, e = pcall(ops[name], i)
      outcome[i] = braid.is_cancelled(e) and "cancelled" or e
      error(e, 0)
    end
  end
  local ok, e = pcall(braid.gather, table.unpack(fns))
  for _, c in ipairs(held) do c:close() end
  assert(not ok, name .. ": the gather did not fail")
  first = first or e
  local counts = {}
  for i = 1, 40 do
    local o = outcome[i]
    if o ~= "cancelled" then
      assert(type(o) == "table" and (o.code == "EMFILE" or o.code == "ENFILE"),
             name .. ": child " .. i .. " ended with " .. tostring(o))
      assert(o.kind == (name == "process" and "spawn" or "io"), o.kind)
      assert(tostring(o):find(name, 1, true), tostring(o))
      o = "EMFILE"
    end
    counts[o] = (counts[o] or 0) + 1
  end
  assert(counts.EMFILE and counts.cancelled, name .. ": no sibling cancelled")
  print(name .. ": " .. counts.EMFILE .. " failed, " .. counts.cancelled ..
        " cancelled; first: " .. e.code)
end
-- Everything is closed again: each operation works, once the server's side
-- of each held connection has closed too (its handler sees the end first),
-- which takes a moment on a loaded machine.
local function eventually(f)
  for i = 1, 200 do
    local ok, e = pcall(f)
    if ok then return end
    if i == 200 or (e.code ~= "EMFILE" and e.code ~= "ENFILE") then error(e, 0) end
    braid.sleep(0.05)
  end
end
eventually(function() braid.tcp.connect("127.0.0.1", srv:port()):close() end)
eventually(function() assert(braid.exec({"cat"}, {stdin = "again"}).stdout == "again") end)
eventually(function() assert(fs.read_file("/dev/null") == "") end)
srv:close()
print("usable afterwards")
error(first, 0)
]]

describe("descriptors exhausted (ulimit -n 24)", function()
  it("fail each operation with an EMFILE error naming it, cancel its siblings, and leave braid usable", function()
    local out, err, code = run_limited(24, EMFILE_SCRIPT)
    assert.are.equal(1, code, err)
    assert.matches("tcp.connect: %d+ failed, %d+ cancelled; first: E[MN]FILE", out)
    assert.matches("process: %d+ failed, %d+ cancelled; first: E[MN]FILE", out)
    assert.matches("braid.fs.read_file: %d+ failed, %d+ cancelled; first: E[MN]FILE", out)
    assert.matches("usable afterwards", out)
    assert.matches("braid: braid.tcp.connect 127.0.0.1:%d+: too many open files", err)
    assert.is_nil(err:find("internal", 1, true))
    assert.is_nil(err:find("fatal", 1, true))
    assert.is_nil(err:find("Sanitizer", 1, true))
  end)
end)

describe("a refused connection", function()
  it("fails its gather with ECONNREFUSED and cancels the siblings", h.run(function()
    local srv = braid.tcp.listen("127.0.0.1", 0, function() end)
    local port = srv:port()
    srv:close()
    local sibling
    local ok, e = pcall(braid.gather,
      function() braid.tcp.connect("127.0.0.1", port) end,
      function()
        local ok2, e2 = pcall(braid.sleep, 60)
        sibling = e2
        error(e2, 0)
      end)
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.are.equal("ECONNREFUSED", e.code)
    assert.matches("tcp.connect 127.0.0.1:" .. port, tostring(e))
    assert.is_true(braid.is_cancelled(sibling))
  end))
end)

describe("a program that cannot start", function()
  local function not_executable()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("#!/bin/sh\necho never\n")
    f:close()
    finally(function() os.remove(path) end)
    return path
  end

  it("raises kind spawn with code EACCES when the file is not executable", h.run(function()
    local path = not_executable()
    local ok, e = pcall(braid.exec, {path})
    assert.is_false(ok)
    assert.are.equal("spawn", e.kind)
    assert.are.equal("EACCES", e.code)
    assert.is_truthy(tostring(e):find(path, 1, true))
    ok, e = pcall(braid.process, {path})
    assert.is_false(ok)
    assert.are.equal("spawn", e.kind)
    assert.are.equal("EACCES", e.code)
  end))

  it("raises kind spawn with code ENOENT from braid.process too", h.run(function()
    local ok, e = pcall(braid.process, {"/nonexistent/program"})
    assert.is_false(ok)
    assert.are.equal("spawn", e.kind)
    assert.are.equal("ENOENT", e.code)
  end))

  it("fails its gather and cancels the siblings, leaving no child behind", h.run(function()
    local path = not_executable()
    local pid, sibling
    local ok, e = pcall(braid.gather,
      function() braid.yield() braid.exec({path}) end,
      function()
        local p <close> = braid.process({"cat"})
        pid = p.pid
        local ok2, e2 = pcall(p.wait, p)
        sibling = e2
        error(e2, 0)
      end)
    assert.is_false(ok)
    assert.are.equal("EACCES", e.code)
    assert.is_true(braid.is_cancelled(sibling))
    assert.is_true(h.gone_within(pid, 10))
  end))
end)
