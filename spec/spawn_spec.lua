-- Issue 15c: children started by braid's own clone(CLONE_VM|CLONE_VFORK)
-- (engine/io/vfork.c): what the child gets, the PATH search done in the
-- child, large requests, braid's stdio closed, spawning from a worker at
-- the same time (worker_spec.lua, run under TSan too), Ctrl-C while
-- spawning, and PR_SET_PDEATHSIG.
local braid = require "braid"
local h = require "helper"

local BIN = os.getenv("BRAID_BIN")
local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

local tmp = h.tmp

local slurp = h.slurp

-- Waits (bounded, outside tasks) until pid has ended: gone from /proc, or
-- a zombie (an orphan is init's to reap, and some containers' init reaps
-- late).
local function ended_now(pid, secs)
  local t0 = os.time()
  while true do
    local s = h.proc_state(pid)
    if s == nil or s == "Z" then return true end
    if os.time() - t0 > secs then return false end
    os.execute("sleep 0.02")
  end
end

-- A program `name` in dir d that prints `says`.
local function prog(d, name, says)
  braid.fs.write_file(d .. "/" .. name, "#!/bin/sh\necho " .. says .. "\n")
  braid.fs.chmod(d .. "/" .. name, 493)   -- 0o755
end

describe("issue 15c: the vfork spawn", function()
  it("gives the child default signals, an empty mask, its own group, braid as parent", function()
    -- the runner starts with SIGUSR2 ignored (inherited through exec); its
    -- child must not inherit that (every signal at SIG_DFL)
    local script = h.script([[
      local braid = require "braid"
      local r = braid.exec({"cat", "/proc/self/status", "/proc/self/stat"})
      local st = r.stdout
      print(st:match("SigIgn:%s*(%x+)"), st:match("SigBlk:%s*(%x+)"))
      local pid, ppid, pgrp = st:match("\n(%d+) %(cat%) %a (%d+) (%d+)")
      print(pid == pgrp, tonumber(ppid) == braid.pid())
    ]])
    local out, err, code = h.sh("trap '' USR2; " .. RUN_ENV .. " " .. BIN .. " " ..
                                script .. " </dev/null")
    os.remove(script)
    assert.are.equal(0, code, err)
    assert.are.equal("0000000000000000\t0000000000000000\ntrue\ttrue\n", out)
  end)

  it("searches PATH in the child: directories and non-executables are passed over", h.run(function()
    local d <close> = braid.fs.tmpdir()
    for _, sub in ipairs{"a", "b", "c"} do braid.fs.mkdir(d .. "/" .. sub) end
    braid.fs.mkdir(d .. "/a/prog")                        -- a directory
    braid.fs.write_file(d .. "/b/prog", "#!/bin/sh\n")    -- not executable
    prog(d.path .. "/c", "prog", "c")
    local path = d .. "/a:" .. d .. "/b:" .. d .. "/c"
    assert.are.equal("c\n", braid.exec({"prog"}, {env = {PATH = path}}).stdout)
    -- only what cannot be executed: EACCES; nothing at all: ENOENT
    local ok, e = pcall(braid.exec, {"prog"}, {env = {PATH = d .. "/a:" .. d .. "/b"}})
    assert.is_false(ok)
    assert.are.same({"spawn", "EACCES"}, {e.kind, e.code})
    ok, e = pcall(braid.exec, {"prog"}, {env = {PATH = d .. "/a/x:/no/such"}})
    assert.are.same({"spawn", "ENOENT"}, {e.kind, e.code})
    -- a directory or a non-executable named by path
    ok, e = pcall(braid.exec, {d .. "/a/prog"})
    assert.are.same({"spawn", "EACCES"}, {e.kind, e.code})
    ok, e = pcall(braid.process, {d .. "/b/prog"})
    assert.are.same({"spawn", "EACCES"}, {e.kind, e.code})
    ok, e = pcall(braid.exec, {""})
    assert.are.same({"spawn", "ENOENT"}, {e.kind, e.code})
  end))

  -- C reads argv, cwd and env: a zero byte cut them short ("a\0b" passed
  -- "a"; cwd "/tmp\0/x" ran in /tmp), and a name with '=' made another one
  it("refuses zero bytes in arguments, cwd and env, and env names that are empty or hold '='", h.run(function()
    local cases = {
      {{"echo", "a\0b"}}, {{"ech\0o"}}, {{"echo"}, {cwd = "/tmp\0/x"}},
      {{"echo"}, {env = {A = "x\0y"}}}, {{"echo"}, {env = {["C\0D"] = "x"}}},
      {{"echo"}, {env = {["A=B"] = "x"}}}, {{"echo"}, {env_add = {[""] = "x"}}},
    }
    for _, c in ipairs(cases) do
      for _, f in ipairs{braid.exec, braid.process} do
        local ok, e = pcall(f, c[1], c[2])
        assert.is_false(ok)
        assert.are.equal("usage", e.kind)
      end
    end
    assert.are.equal("42 x\n", braid.exec({"sh", "-c", "echo $1 $A", "sh", 42},
                                          {env = {A = "x"}}).stdout)
  end))

  -- libuv 1.44 has no name for ENOEXEC: the error said "Unknown system
  -- error -8", code and message alike
  it("names an errno libuv does not know: a file that is no program is ENOEXEC", h.run(function()
    local d <close> = braid.fs.tmpdir()
    local p = d .. "/garbage"
    braid.fs.write_file(p, "\127ELF but not really\n")
    braid.fs.chmod(p, 493)   -- 0o755
    for _, f in ipairs{braid.exec, braid.process} do
      local ok, e = pcall(f, {p})
      assert.is_false(ok)
      assert.are.same({"spawn", "ENOEXEC"}, {e.kind, e.code})
      assert.matches("cannot start '" .. p:gsub("%p", "%%%0") .. "': Exec format error$",
                     e.message)
    end
  end))

  it("takes an empty PATH entry as the child's directory (its cwd option)", h.run(function()
    local d <close> = braid.fs.tmpdir()
    prog(d.path, "here", "here")
    local r = braid.exec({"here"}, {cwd = d.path, env = {PATH = "/no/such:"}})
    assert.are.equal("here\n", r.stdout)
    local ok, e = pcall(braid.exec, {"here"}, {env = {PATH = "/no/such:"}})
    assert.are.same({"spawn", "ENOENT"}, {e.kind, e.code})
  end))

  it("spawns with 200 PATH entries, 1000 arguments and 5000 variables", h.run(function()
    local dirs = {}
    for i = 1, 199 do dirs[i] = "/no/such/dir/" .. i end
    dirs[200] = "/usr/bin:/bin"
    local env = {PATH = table.concat(dirs, ":")}
    for i = 1, 5000 do env["BRAID_V" .. i] = tostring(i) end
    local argv = {"sh", "-c", 'echo $# "$1" "$1000" "$BRAID_V4999"; env | grep -c ^BRAID_V', "sh"}
    for i = 1, 1000 do argv[#argv + 1] = "arg" .. i end
    local r = braid.exec(argv, {env = env})
    assert.are.equal("1000 arg1 arg1000 4999\n5000\n", r.stdout)
    -- a PATH entry longer than a path can be is passed over
    env.PATH = ("x"):rep(5000) .. ":/bin"
    assert.are.equal(0, braid.exec({"true"}, {env = env}).code)
  end))

  it("runs children when braid (runner or module) was started with stdin and stdout closed (/dev/null then)", function()
    local script = h.script([[
      local runner = rawget(_G, "braid") ~= nil   -- else the module
      local braid = require "braid"
      local function main()
        local r = braid.exec({"cat"}, {stdin = "fed\n"})
        local e = braid.exec({"sh", "-c", "echo out; echo err >&2"}, {stderr = "stdout"})
        io.stderr:write(r.stdout, e.stdout)
      end
      if runner then main() else braid.run(main) end
    ]])
    -- the runner, and the module in stock lua5.4 (braid.run's own loop
    -- took fd 0 for epoll, and libuv aborted closing it)
    for _, host in ipairs{BIN, "lua5.4"} do
      local _, err, code = h.sh(RUN_ENV .. " " .. host .. " " .. script .. " <&- >&-")
      assert.are.equal(0, code, err)
      assert.are.equal("fed\nout\nerr\n", err)
    end
    os.remove(script)
  end)

  it("leaves no child behind when Ctrl-C comes while spawning in a loop", function()
    local pidfile = tmp()
    local script = h.script(([[
      local braid = require "braid"
      -- how many children have written their pid (one the 0.05 s timeout
      -- stops before it starts writes none: under ASan on a busy machine a
      -- shell can take that long, so five exec calls need not be five pids)
      local function written()
        local f = io.open(%q)
        local s = f and f:read("a") or ""
        if f then f:close() end
        local n = 0
        for _ in s:gmatch("%%d+\n") do n = n + 1 end
        return n
      end
      local ready = false
      while true do
        -- each child would outlive braid: ended by the timeout, or by Ctrl-C
        local ok, e = pcall(braid.exec, {"sh", "-c", "echo $$ >> %s; exec sleep 30"},
                            {timeout = 0.05})
        if not ok and not braid.is_timeout(e) then error(e, 0) end
        if not ready and written() >= 5 then
          ready = true
          print("ready") io.stdout:flush()
        end
      end
    ]]):format(pidfile, pidfile))
    local out = tmp()
    local _, err, code = h.sh("{\n" .. table.concat({
      ("%s %s %s >%s </dev/null &"):format(RUN_ENV, BIN, script, out), "pid=$!",
      "(sleep 60; kill -KILL $pid) 2>/dev/null & guard=$!",
      ("for _ in $(seq 1 600); do grep -q ready %s && break; sleep 0.05; done"):format(out),
      "kill -INT $pid",
      "wait $pid; code=$?; kill $guard 2>/dev/null; exit $code"}, "\n") .. "\n}")
    os.remove(script)
    os.remove(out)
    assert.are.equal(130, code, err)
    local n = 0
    for pid in (slurp(pidfile) or ""):gmatch("%d+") do
      n = n + 1
      assert.is_true(ended_now(tonumber(pid), 10), "child " .. pid .. " still runs")
    end
    os.remove(pidfile)
    assert.is_true(n >= 5, "only " .. n .. " children ran")
  end)

  it("a child dies with braid when braid is SIGKILLed (PR_SET_PDEATHSIG)", function()
    local pidfile = tmp()
    local script = h.script(([[
      local braid = require "braid"
      local p = braid.process({"sleep", "30"})
      local f = assert(io.open(%q, "w"))
      f:write(braid.pid(), " ", p.pid, "\n")
      f:close()
      os.rename(%q, %q)
      braid.sleep(60)
    ]]):format(pidfile .. ".tmp", pidfile .. ".tmp", pidfile))
    local _, err, code = h.sh("{\n" .. table.concat({
      ("%s %s %s </dev/null & pid=$!"):format(RUN_ENV, BIN, script),
      ("for _ in $(seq 1 600); do [ -e %s ] && break; sleep 0.05; done"):format(pidfile),
      "kill -KILL $pid", "wait $pid; exit $?"}, "\n") .. "\n}")
    os.remove(script)
    local pids = slurp(pidfile) or ""
    os.remove(pidfile)
    local child = pids:match("^%d+ (%d+)")
    assert.is_truthy(child, "no pids written: " .. err)
    assert.are.equal(137, code, err)          -- 128 + SIGKILL
    assert.is_true(ended_now(tonumber(child), 10), "child " .. child .. " still runs")
  end)
end)
