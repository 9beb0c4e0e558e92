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
  it("leaves the task usable when braid.map's options are bad (use-after-free)", h.run(function()
    local ok, e = pcall(braid.map, {1}, print, {limit = 1.5})
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    -- the task's innermost scope is intact: spawning and waiting work
    collectgarbage()
    assert.are.equal(7, braid.spawn(function() return 7 end):await())
    assert.are.same({1, 2, n = 2}, braid.map({1, 2}, function(x) return x end))
  end))

  it("leaves the task usable when a __len would raise inside braid.map", h.run(function()
    -- braid.map reads its list raw (items are read from the scheduler)
    local bad = setmetatable({}, {__len = function() error("no length") end})
    assert.are.same({n = 0}, braid.map(bad, print))
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
  teardown(function() os.remove(spawn_many) os.remove(gather_many) end)
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

-- Runs `src` in the runner; once it has printed "ready" (so braid is
-- running the script), sends each signal in `sigs` (the next one after the
-- script prints the next "ready"); returns stdout, stderr, exit code. The
-- whole run is bounded (killed after 30 s), so a hang fails instead of
-- hanging.
-- With `ready_on_stderr`, the "ready" lines are looked for on stderr (which
-- is then returned as it was written), so that stdout can stay unflushed.
local function signalled(src, sigs, args, ready_on_stderr)
  local script = h.script(src)
  local out = os.tmpname()
  local errf = out .. ".err"
  local cmd = {("%s %s %s %s >%s %s &"):format(os.getenv("BRAID_RUN_ENV") or "",
               os.getenv("BRAID_BIN"), args or "", script, out,
               ready_on_stderr and "2>" .. errf or ""), "pid=$!",
               "(sleep 30; kill -KILL $pid) 2>/dev/null & guard=$!"}
  for i, sig in ipairs(sigs) do
    cmd[#cmd + 1] = ("for _ in $(seq 1 600); do [ \"$(grep -c ready %s)\" -ge %d ] && break; sleep 0.05; done"):format(ready_on_stderr and errf or out, i)
    -- a repeat within 0.1 s is taken as the same signal (interrupt.c)
    if i > 1 then cmd[#cmd + 1] = "sleep 0.2" end
    cmd[#cmd + 1] = "kill -" .. sig .. " $pid"
  end
  cmd[#cmd + 1] = "wait $pid; code=$?; kill $guard 2>/dev/null; exit $code"
  local _, err, code = h.sh("{\n" .. table.concat(cmd, "\n") .. "\n}")
  local f = io.open(out)
  local stdout = f:read("a")
  f:close()
  if ready_on_stderr then err = h.slurp(errf) or "" end
  os.remove(out)
  os.remove(errf)
  os.remove(script)
  return stdout, err, code
end

describe("issue 13.5: Ctrl-C stops Lua code that never suspends", function()
  it("interrupts `while true do end` (it survived three SIGINTs)", function()
    local _, err, code = signalled([[print("ready") io.stdout:flush() while true do end]], {"INT"})
    assert.are.equal(130, code, err)
    assert.truthy(err:find("braid: interrupted", 1, true), err)
  end)

  it("interrupts a loop inside a coroutine of the script's own", function()
    local _, err, code = signalled([[
      print("ready") io.stdout:flush()
      coroutine.wrap(function() while true do end end)()
    ]], {"INT"})
    assert.are.equal(130, code, err)
  end)

  it("interrupts a child task that spins, and its <close> handlers run", function()
    local out, err, code = signalled([[
      local t = braid.spawn(function()
        local _ <close> = setmetatable({}, {__close = function() print("closed") end})
        print("ready") io.stdout:flush()
        while true do end
      end)
      t:await()
    ]], {"INT"})
    assert.are.equal(130, code, err)
    assert.truthy(out:find("closed", 1, true), out)
  end)

  it("exits at once on a second Ctrl-C when the first was swallowed", function()
    local _, err, code = signalled([[
      print("ready") io.stdout:flush()
      while true do
        pcall(function() while true do end end)
        print("ready") io.stdout:flush()
      end
    ]], {"INT", "INT"})
    assert.are.equal(130, code, err)
    assert.truthy(err:find("interrupted again", 1, true), err)
  end)
end)

describe("issue 13.6: a task that never suspends is stopped when its grace period ends", function()
  it("ends the run about --grace seconds after the failure (it ran until killed)", function()
    local _, err, code = signalled([[
      braid.spawn(function() while true do pcall(braid.sleep, 1) end end)
      braid.sleep(0.05)
      print("ready") io.stdout:flush()
      error("boom")
    ]], {}, "--grace 0.5")
    assert.are.equal(1, code, err)
    assert.truthy(err:find("abandoned: still running Lua code", 1, true), err)
    assert.truthy(err:find("boom", 1, true), err)
  end)

  it("stops a cancelled task spinning in pure Lua, also with pcall around it", function()
    -- through the runner, bounded: without the watchdog this spins forever
    local out, err, code = signalled([[
      local ev = braid.event()
      local t = braid.spawn(function()
        pcall(ev.wait, ev)          -- cancelled here, and swallowed
        while true do pcall(function() while true do end end) end
      end)
      braid.yield()
      t:cancel()
      local ok, e = pcall(t.await, t)
      print(ok, e.kind, t:status())
    ]], {}, "--grace 0.2")
    assert.are.equal(0, code, err)
    assert.are.equal("false\tcancelled\tcancelled\n", out)
  end)
end)

describe("a shield does not lift the bound on cleanup", function()
  -- the grace watch looked at the innermost scope only, which a shield
  -- keeps uncancelled: one signal never ended these (killed after 30 s)
  it("stops the main task spinning inside braid.shield after --grace (SIGINT)", function()
    local _, err, code = signalled([[
      print("ready") io.stdout:flush()
      braid.shield(function() while true do end end)
    ]], {"INT"}, "--grace 0.5")
    assert.are.equal(130, code, err)
    assert.truthy(err:find("abandoned: still running Lua code 0.5 s", 1, true), err)
    assert.is_nil(err:find("spawned at ?", 1, true), err)
  end)

  it("stops a child spinning inside braid.shield after --grace (SIGTERM)", function()
    local _, err, code = signalled([[
      braid.spawn(function()
        print("ready") io.stdout:flush()
        braid.shield(function() while true do end end)
      end)
      braid.sleep(100)
    ]], {"TERM"}, "--grace 0.5")
    assert.are.equal(143, code, err)
    assert.truthy(err:find("abandoned: still running Lua code 0.5 s", 1, true), err)
  end)
end)

describe("issue 13.13: SIGTERM and SIGHUP clean up like Ctrl-C", function()
  for _, case in ipairs({{"TERM", 143, "terminated"}, {"HUP", 129, "hung up"}}) do
    it("stops the script's children and exits " .. case[2] .. " on SIG" .. case[1] .. " (children kept running)", function()
      local out, err, code = signalled([[
        local p = braid.process({"sleep", "100"})
        print(p.pid) print("ready") io.stdout:flush()
        p:wait()
      ]], {case[1]})
      assert.are.equal(case[2], code, err)
      assert.truthy(err:find("braid: " .. case[3], 1, true), err)
      local pid = assert(tonumber(out:match("^(%d+)")))
      assert.is_nil(h.proc_state(pid), "the child is still there")
    end)
  end

  it("exits at once on a second SIGTERM during a long cleanup", function()
    local _, err, code = signalled([[
      local _ <close> = setmetatable({}, {__close = function()
        print("ready") io.stdout:flush()
        braid.shield(braid.sleep, 60)
      end})
      print("ready") io.stdout:flush()
      braid.sleep(60)
    ]], {"TERM", "TERM"})
    assert.are.equal(143, code, err)
    assert.truthy(err:find("terminated again", 1, true), err)
  end)

  -- the flush before that exit hung when stdout was a full pipe whose
  -- reader had stopped reading (a pager at its prompt)
  it("exits at once on a second signal while stdout is a full pipe nobody reads", function()
    local script = h.script([[
      io.stdout:setvbuf("full")
      io.write(("x"):rep(4096)) io.stdout:flush()   -- fills the 4 KB pipe
      io.write("tail")                               -- stays in the buffer
      io.stderr:write("ready\n")
      local c <close> = setmetatable({}, {__close = function()
        braid.shield(braid.sleep, 30)
      end})
      braid.sleep(30)
    ]])
    local driver = h.script(([[
import fcntl, os, signal, subprocess, sys, time
r, w = os.pipe()
fcntl.fcntl(w, 1031, 4096)          # F_SETPIPE_SZ: one page
p = subprocess.Popen(sys.argv[1:] + [%q], stdout=w, stderr=subprocess.PIPE)
os.close(w)
p.stderr.readline()
time.sleep(0.2); p.send_signal(signal.SIGINT)
time.sleep(0.3); p.send_signal(signal.SIGINT)
try:
    p.wait(timeout=10); print("exited", p.returncode)
except subprocess.TimeoutExpired:
    p.kill(); p.wait(); print("hung")
]]):format(script))
    local out, err = h.sh("env -u LD_PRELOAD /usr/bin/python3 " .. driver .. " env " ..
                          (os.getenv("BRAID_RUN_ENV") or "") .. " " .. os.getenv("BRAID_BIN"))
    os.remove(script)
    os.remove(driver)
    assert.are.equal("exited 130\n", out, err)
  end)

  -- _exit skipped the flush of stdio's buffers: what io.write had put
  -- there was lost (stdout to a file or pipe is fully buffered)
  it("keeps what the script wrote to stdout when a second signal exits at once", function()
    local out, err, code = signalled([[
      print("printed before")
      io.write("written before\n")   -- print flushes what comes before it
      local _ <close> = setmetatable({}, {__close = function()
        io.stderr:write("ready\n")
        braid.shield(braid.sleep, 60)
      end})
      io.stderr:write("ready\n")
      braid.sleep(60)
    ]], {"TERM", "INT"}, nil, true)
    assert.are.equal(130, code, err)
    assert.truthy(err:find("interrupted again", 1, true), err)
    assert.are.equal("printed before\nwritten before\n", out)
  end)

  it("leaves SIGTERM to a script that waits for it", function()
    local out, err, code = signalled([[
      local w = braid.signal("SIGTERM")
      print("ready") io.stdout:flush()
      print(w:wait())
    ]], {"TERM"})
    assert.are.equal(0, code, err)
    assert.truthy(out:find("SIGTERM", 1, true), out)
  end)
end)

-- The second signal's exit ran only from the loop's callback or the Lua
-- hook: neither runs while the main thread sits in C code, so no number
-- of signals stopped these (killed by the guard after 30 s).
describe("a second stop signal while the main thread is stuck in C", function()
  -- The first signal must find the script in C: one taken by the hook just
  -- before the C call cancels the run as usual. So "ready" comes from
  -- inside the C call (os.execute's shell), or from a shell started before
  -- it that waits 0.5 s (the script needs microseconds to get there).
  -- Twice at once: signalled() waits for the i-th before the i-th signal.
  local READY = [[os.execute("(sleep 0.5; echo ready; echo ready) &")]]

  -- A FIFO opened read-write as stdin: io.read waits, and no writer ever
  -- ends it.
  local function fifo()
    local path = h.tmp()
    assert(os.execute("mkfifo " .. path))
    return path
  end

  it("exits 130 on a second SIGINT while io.read() blocks on a pipe", function()
    local f = fifo()
    local _, err, code = signalled(READY .. "\nio.read()", {"INT", "INT"}, "<>" .. f)
    os.remove(f)
    assert.are.equal(130, code, err)
    assert.truthy(err:find("braid: interrupted again, exiting", 1, true), err)
  end)

  it("kills the group of a child it started, grandchildren too, on that exit", function()
    local f = fifo()
    local out, err, code = signalled([[
      local p = braid.process({"sh", "-c", "sleep 1000 & echo $!; wait"},
                              {stdout = "pipe"})
      print(p:read_line()) io.stdout:flush()
    ]] .. READY .. "\nio.read()", {"INT", "INT"}, "<>" .. f)
    os.remove(f)
    local pid = assert(tonumber(out:match("^(%d+)")), out)
    local function alive()   -- a zombie waits for init to reap it
      local s = h.proc_state(pid)
      return s ~= nil and s ~= "Z"
    end
    for _ = 1, 100 do
      if not alive() then break end
      os.execute("sleep 0.05")
    end
    local survived = alive()
    if survived then os.execute("kill -KILL " .. pid) end
    assert.are.equal(130, code, err)
    assert.is_false(survived, "the grandchild outlived braid")
  end)

  it("exits 143 on a second SIGTERM while os.execute waits", function()
    local pidf = h.tmp()
    local _, err, code = signalled(([[
      os.execute("echo $$ >%s; echo ready; echo ready; exec sleep 30")
    ]]):format(pidf), {"TERM", "TERM"})
    local pid = tonumber(h.slurp(pidf) or "")
    os.remove(pidf)
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end   -- not braid's
    assert.are.equal(143, code, err)
    assert.truthy(err:find("braid: terminated again, exiting", 1, true), err)
  end)

  it("leaves a SIGTERM a script waits for to the script, also while it is in C", function()
    local out, err, code = signalled(([[
      local w = braid.signal("SIGTERM")
      braid.spawn(function() while true do w:wait() print("got TERM") end end)
      braid.sleep(0.05)
      %s
      io.popen("sleep 1.5"):read("a")
      braid.sleep(0.2)
      print("done")
      os.exit(0)
    ]]):format(READY), {"TERM", "TERM"})
    assert.are.equal(0, code, err)
    local _, got = out:gsub("got TERM", "")
    assert.are.equal(2, got, out)
    assert.truthy(out:find("done\n", 1, true), out)
  end)

  it("exits 130 on a second SIGINT in C also when the script watches SIGINT", function()
    local f = fifo()
    local _, err, code = signalled('local w = braid.signal("SIGINT")\n' .. READY ..
                                   "\nio.read()", {"INT", "INT"}, "<>" .. f)
    os.remove(f)
    assert.are.equal(130, code, err)
    assert.truthy(err:find("braid: interrupted again, exiting", 1, true), err)
  end)

  it("exits 143 on a second SIGTERM while a C function runs long", function()
    local _, err, code = signalled(READY .. [[

      local _ = ("x"):rep(1e6):find(".-y")   -- no y: quadratic, minutes inside string.find
    ]], {"TERM", "TERM"})
    assert.are.equal(143, code, err)
    assert.truthy(err:find("braid: terminated again, exiting", 1, true), err)
  end)
end)

describe("issue 13.8: a task's <close> handlers run inside the task", function()
  it("runs them in the task when it is cancelled: braid.current() and shield work there", h.run(function()
    local seen = {}
    local t = braid.spawn(function()
      local _ <close> = setmetatable({}, {__close = function()
        seen.current = braid.current()
        seen.slept = braid.shield(function() braid.sleep(0.01) return true end)
      end})
      braid.sleep(60)
    end)
    braid.yield()
    t:cancel()
    assert.is_false(pcall(t.await, t))
    assert.are.equal(t, seen.current)
    assert.is_true(seen.slept)
  end))

  it("runs them in the task when the body raises", h.run(function()
    local seen, t
    local ok, e = pcall(braid.scope, function(s)
      t = s:spawn(function()
        local _ <close> = setmetatable({}, {__close = function() seen = braid.current() end})
        error("boom")
      end)
    end)
    assert.is_false(ok)
    assert.truthy(tostring(e):find("boom"))
    assert.are.equal(t, seen)
  end))

  it("does not lose an error raised by a <close> handler of a cancelled task", function()
    local ok, e = pcall(braid.run, function()
      braid.scope(function(s)
        s:spawn(function()
          local _ <close> = setmetatable({}, {__close = function() error("cleanup failed") end})
          braid.sleep(60)
        end)
        braid.yield()
        s:cancel()
      end)
    end)
    assert.is_false(ok)
    assert.truthy(tostring(e):find("cleanup failed", 1, true), tostring(e))
  end)

  it("runs the main chunk's <close> handlers in the root task after Ctrl-C", function()
    local out, err, code = signalled([[
      local _ <close> = setmetatable({}, {__close = function()
        print(braid.current() ~= nil, (pcall(braid.shield, braid.sleep, 0.01)))
      end})
      print("ready") io.stdout:flush()
      braid.sleep(60)
    ]], {"INT"})
    assert.are.equal(130, code, err)
    assert.truthy(out:find("true\ttrue", 1, true), out)
  end)
end)

describe("issue 13.9: failure records go with the failing task, not with the error's value", function()
  it("keeps memory flat over 100000 failures with distinct strings in one run (52 MB were kept until the run ended)", h.run(function()
    local function fail(i) error("failure " .. i, 0) end
    local function failures(from, to)
      for i = from, to, 2 do
        pcall(braid.scope, function(s) s:spawn(fail, i) end)   -- a task failing
        pcall(braid.timeout, 60, fail, i + 1)                   -- a body under a deadline
      end
    end
    failures(1, 2000)
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    failures(2001, 102000)
    collectgarbage()
    collectgarbage()
    local grown = collectgarbage("count") - before
    assert.is_true(grown < 512, ("grew by %.0f KB"):format(grown))
  end))

  local function report_of(src)
    local path = h.script(src)
    local _, err, code = h.braid(path)
    os.remove(path)
    return err, code, path
  end

  it("reports a later failure with an equal string with its own task and traceback (the first one's were printed)", function()
    local err, code, path = report_of(table.concat({
      "local function fail() error('the same failure', 0) end",   -- 1
      "local ok = pcall(braid.scope, function(s)",                 -- 2
      "  s:spawn(fail).name = 'first'",                            -- 3
      "end)",                                                      -- 4
      "assert(not ok)",                                            -- 5
      "local second = braid.spawn(function()",                     -- 6
      "  braid.sleep(0.01)",                                       -- 7
      "  fail()",                                                  -- 8
      "end)",                                                      -- 9
      "second.name = 'second'",                                    -- 10
      "second:await()",                                            -- 11
    }, "\n") .. "\n")
    assert.are.equal(1, code, err)
    assert.truthy(err:find('^braid: the same failure\n  in task 3 "second", spawned at [^\n]*:6\n' ..
                           '    inside task 1 "' .. path:gsub("%p", "%%%0") ..
                           '"\nstack traceback:\n'), err)
    assert.truthy(err:find(":8: in function <[^\n]*:6>"), err)
    assert.falsy(err:find("first", 1, true), err)
  end)

  it("reports an error raised while cancelling with the task that raised it, not an earlier one with an equal string", function()
    local err, code = report_of(table.concat({
      "local ok = pcall(braid.scope, function(s)",                          -- 1
      "  s:spawn(error, 'cleanup failed', 0).name = 'earlier'",             -- 2
      "end)",                                                               -- 3
      "assert(not ok)",                                                     -- 4
      "braid.gather(function()",                                            -- 5
      "  braid.sleep(0.01)",                                                -- 6
      "  error('the first failure', 0)",                                    -- 7
      "end, function()",                                                    -- 8
      "  local _ <close> = setmetatable({}, {__close = function()",         -- 9
      "    error('cleanup failed', 0)",                                     -- 10
      "  end})",                                                            -- 11
      "  braid.sleep(60)",                                                  -- 12
      "end)",                                                               -- 13
    }, "\n") .. "\n")
    assert.are.equal(1, code, err)
    local cancelling = err:match("braid: error while cancelling: cleanup failed\n(.-)\nbraid: ")
    assert.truthy(cancelling, err)
    assert.truthy(cancelling:find('^  in task 4 "[^"]*:8", spawned at [^\n]*:5 %(in braid.gather/race/any/map%)'), err)
    assert.truthy(cancelling:find(":10: in function <[^\n]*:9>"), err)
    assert.falsy(err:find("earlier", 1, true), err)
    assert.truthy(err:find('braid: the first failure\n  in task 3 ', 1, true), err)
    assert.truthy(err:find("also raised while cancelling: cleanup failed", 1, true), err)
  end)
end)

describe("issue 13.4: every duration option is read one way (NaN refused, negative 0, math.huge never)", function()
  local NAN, HUGE = 0 / 0, math.huge

  -- A member whose cleanup (shielded) takes 0.05 s, cancelled at once:
  -- returns whether its cleanup finished (it was not abandoned).
  local function cleanup_finishes(run_scope)
    local finished = false
    run_scope(function(s)
      s:spawn(function()
        local _ <close> = setmetatable({}, {__close = function()
          braid.shield(braid.sleep, 0.05)
          finished = true
        end})
        braid.sleep(60)
      end)
      braid.yield()
      s:cancel()
    end)
    return finished
  end

  it("grace = math.huge waits for cleanup instead of abandoning at once: braid.scope, gather, braid.run", function()
    for _, clock in ipairs({"real", "virtual"}) do
      braid.run(function()
        assert.is_true(cleanup_finishes(function(body) braid.scope(body, {grace = HUGE}) end))
        assert.is_true(cleanup_finishes(function(body) braid.scope(body, {grace = 1e300}) end))
        assert.is_true(cleanup_finishes(function(body)
          braid.gather(function() braid.scope(body) end, {grace = HUGE})
        end))
      end, {clock = clock})
      braid.run(function()
        assert.is_true(cleanup_finishes(braid.scope))
      end, {clock = clock, grace = HUGE})
    end
  end)

  it("a negative grace is 0: the member is abandoned at once", h.run(function()
    local t0 = braid.now()
    assert.is_false(cleanup_finishes(function(body) braid.scope(body, {grace = -1}) end))
    assert.is_true(braid.now() - t0 < 0.05)
  end))

  it("on the virtual clock, a sleep or deadline of math.huge is never reached: waiting on it alone is a deadlock", function()
    local ok, e = pcall(braid.run, function() braid.sleep(HUGE) end, {clock = "virtual"})
    assert.are.equal("deadlock", e.kind, tostring(e))
    ok, e = pcall(braid.run, function()
      braid.timeout(HUGE, function() braid.event():wait() end)
    end, {clock = "virtual"})
    assert.are.equal("deadlock", e.kind, tostring(e))
    ok, e = pcall(braid.run, function()
      braid.gather(function() braid.event():wait() end, {timeout = 1e11})
    end, {clock = "virtual"})
    assert.are.equal("deadlock", e.kind, tostring(e))
  end)

  it("braid.tcp.connect: timeout = math.huge does not time out at once, a negative one is 0 (it raised)", h.run(function()
    local srv = braid.tcp.listen("127.0.0.1", 0, function(s) s:close() end)
    local port = srv:port()
    local c = braid.tcp.connect("127.0.0.1", port, {timeout = HUGE})
    c:close()
    srv:close()
    local ok, e = pcall(braid.tcp.connect, "localhost", port, {timeout = -1})
    assert.are.equal("io", e.kind, tostring(e))
    assert.is_true(e.code == "ETIMEDOUT" or e.code == "ECONNREFUSED", e.code)
  end))

  it("braid.exec: timeout and kill_grace of math.huge never fire, negative ones are 0 (they raised)", h.run(function()
    assert.are.equal("ok\n", braid.exec({"sh", "-c", "sleep 0.05; echo ok"}, {timeout = HUGE}).stdout)
    local t0 = braid.now()
    local ok, e = pcall(braid.exec, {"sleep", "30"}, {timeout = -1})
    assert.is_true(braid.is_timeout(e), tostring(e))
    assert.matches("timed out after 0.0", e.message, 1, true)
    -- kill_grace = -1 is 0: a child ignoring SIGTERM is killed at once
    ok, e = pcall(braid.exec, {"sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"},
                  {timeout = 0.05, kill_grace = -1})
    assert.is_true(braid.is_timeout(e), tostring(e))
    -- kill_grace = math.huge: SIGTERM only, which this child obeys
    ok, e = pcall(braid.exec, {"sleep", "30"}, {timeout = 0.05, kill_grace = HUGE})
    assert.is_true(braid.is_timeout(e), tostring(e))
    assert.is_true(braid.now() - t0 < 5)
  end))

  it("braid.process: kill_grace = -1 is 0, math.huge sends SIGTERM only", h.run(function()
    local stubborn = {"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"}
    local p = braid.process(stubborn, {kill_grace = -1})
    assert.are.equal("ready", p:read_line())
    local t0 = braid.now()
    p:close()
    assert.is_true(braid.now() - t0 < 0.15, "took " .. braid.now() - t0)
    assert.are.same({nil, "SIGKILL"}, {p:wait()})
    p = braid.process({"sleep", "30"}, {kill_grace = HUGE})
    p:close()
    assert.are.same({nil, "SIGTERM"}, {p:wait()})
  end))

  it("refuses NaN with a usage error naming the option and the function", h.run(function()
    local function refused(fname, key, f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok, fname .. " accepted NaN")
      assert.are.equal("usage", e.kind, tostring(e))
      assert.matches("bad option '" .. key .. "' to '" .. fname .. "' (seconds must not be NaN)", e.message, 1, true)
    end
    local fn = function() end
    refused("braid.scope", "grace", braid.scope, fn, {grace = NAN})
    for _, name in ipairs({"gather", "race", "any"}) do
      refused("braid." .. name, "grace", braid[name], fn, {grace = NAN})
      refused("braid." .. name, "timeout", braid[name], fn, {timeout = NAN})
    end
    refused("braid.map", "timeout", braid.map, {1}, fn, {timeout = NAN})
    refused("braid.exec", "timeout", braid.exec, {"true"}, {timeout = NAN})
    refused("braid.exec", "kill_grace", braid.exec, {"true"}, {kill_grace = NAN})
    refused("braid.process", "kill_grace", braid.process, {"true"}, {kill_grace = NAN})
    refused("braid.tcp.connect", "timeout", braid.tcp.connect, "127.0.0.1", 1, {timeout = NAN})
    local ok, e = pcall(braid.sleep, NAN)
    assert.matches("bad argument #1 to 'braid.sleep' (seconds must not be NaN)", e.message, 1, true)
    ok, e = pcall(braid.timeout, NAN, fn)
    assert.matches("bad argument #1 to 'braid.timeout' (seconds must not be NaN)", e.message, 1, true)
  end))

  it("refuses NaN as braid.run's grace", function()
    local ok, e = pcall(braid.run, function() end, {grace = NAN})
    assert.are.equal("usage", e.kind)
    assert.matches("bad option 'grace' to 'braid.run' (seconds must not be NaN)", e.message, 1, true)
  end)
end)

describe("hostile input to the primitives (review of issues 12 and 13)", function()
  it("reads exec's timeout and check when it is called, not after the wait", h.run(function()
    local opts = {timeout = 0.2, check = false}
    braid.spawn(function()
      braid.sleep(0.05)
      opts.timeout, opts.check = 99, true
      setmetatable(opts, {__index = function() error("hostile __index") end})
    end)
    local ok, e = pcall(braid.exec, {"sleep", "5"}, opts)
    assert.is_false(ok)
    assert.are.equal("timeout", e.kind)
    assert.truthy(e.message:find("after 0.2", 1, true), e.message)
  end))

  it("takes argv's raw length: a __len cannot shorten or overflow it", h.run(function()
    local argv = setmetatable({"echo", "a", "b"}, {__len = function() return 2^32 + 1 end})
    assert.are.equal("a b\n", braid.exec(argv).stdout)
  end))

  it("clamps a huge backlog, and reads a stream with an integral float count", h.run(function()
    local server = braid.tcp.listen("127.0.0.1", 0, function(conn)
      conn:write("hello")
      conn:close()
    end, {backlog = math.huge})
    local c <close> = braid.tcp.connect("127.0.0.1", server:port())
    assert.are.equal("he", c:read(2.0))
    server:close()
  end))

  it("refuses to watch SIGPIPE, which braid keeps for itself so that writes raise EPIPE", h.run(function()
    local ok, e = pcall(braid.signal, "PIPE")
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
  end))
end)

describe("a group that raises while it ends (review of issue 13.2)", function()
  -- gather's results need room on the caller's stack; near a full stack
  -- "too many results" was raised after the group left the task but while
  -- it was still linked in its scope: a later cancel walked freed memory
  -- (ASan: heap-use-after-free in braid__scope_cancel).
  it("leaves nothing linked when it cannot hand its results over", h.run(function()
    local f = function() return 1 end
    local big = {}
    for i = 1, 999990 do big[i] = false end
    local fs = {}
    for i = 1, 40 do fs[i] = f end   -- more results than a call's free slots
    local function g(...) return pcall(braid.gather, table.unpack(fs)) end
    local raised = 0
    for n = 999900, 999920 do
      braid.scope(function(s)
        local ok, inner_ok, e = pcall(function() return g(table.unpack(big, 1, n)) end)
        if ok and inner_ok == false and tostring(e):find("too many results") then
          raised = raised + 1
        end
        collectgarbage()
        s:cancel()   -- walks what is linked in s: a freed group was
      end)
    end
    assert.is_true(raised > 0, "no case reached the group's end with a full stack")
  end))
end)

describe("cancellation errors (review of issue 13.15's per-cause error)", function()
  it("gives each task a cancellation error of its own, which it may change", h.run(function()
    local errs = {}
    pcall(braid.scope, function(s)
      for i = 1, 2 do
        s:spawn(function()
          local ok, e = pcall(braid.sleep, 60)
          errs[i] = e
          if i == 1 then e.kind = "rewritten" end
          error(e, 0)
        end)
      end
      braid.yield()
      s:cancel("stop")
    end)
    assert.are_not.equal(errs[1], errs[2])
    assert.are.equal("cancelled", errs[2].kind)
    assert.are.equal("stop", errs[2].reason)
  end))

  it("says a task was abandoned, also after an earlier task:cancel(reason)", h.run(function()
    local t
    braid.scope(function(s)
      t = s:spawn(function()
        pcall(braid.sleep, 60)                     -- cancelled, swallowed
        braid.shield(braid.sleep, 60)              -- then overstays its grace
      end)
      braid.yield()
      t:cancel("first")
      braid.yield()
      s:cancel()
    end, {grace = 0.1})
    local ok, e = t:result()
    assert.is_false(ok)
    assert.are.equal("abandoned after its grace period", e.reason)
  end))
end)

-- Runs `src` in the runner `runs` times; each time, once it has printed
-- "ready", sends `sig` after a random 0-50 ms and gives it 5 s to exit
-- (then kills it). Returns how many runs the signal did not end, and the
-- exit codes seen ("lost" for those). The sanitizer settings of
-- BRAID_RUN_ENV apply to braid only.
local function raced(src, sig, runs, args)
  local script = h.script(src)
  local driver = h.script([[
import os, random, signal, subprocess, sys, time
sig, runs, cmd = getattr(signal, sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lost, codes = 0, []
for _ in range(runs):
    p = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    line = p.stdout.readline()   # "ready", or "" if it ended first
    time.sleep(random.random() * 0.05)
    os.kill(p.pid, sig)
    try:
        p.wait(timeout=5)
        codes.append(str(p.returncode) if line else "noready")
    except subprocess.TimeoutExpired:
        lost += 1
        codes.append("lost")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
print("lost=%d codes=%s" % (lost, ",".join(codes)))
]])
  local cmd = ("%s exec %s %s %s"):format(os.getenv("BRAID_RUN_ENV") or "",
              os.getenv("BRAID_BIN"), args or "", script)
  local out, err = h.sh(("timeout 120 env -u LD_PRELOAD python3 %s %s %d '%s'")
                        :format(driver, sig, runs, cmd:gsub("'", "'\\''")))
  os.remove(script)
  os.remove(driver)
  return tonumber(out:match("lost=(%d+)")), out .. err
end

describe("a signal is not lost while Lua code resumes coroutines", function()
  -- the handler set its hook on the coroutine just resumed or about to be,
  -- and the re-arm at the next resume cleared it: about one run in three
  -- ignored the signal
  for _, case in ipairs({{"SIGINT", 130}, {"SIGTERM", 143}}) do
    it("stops `while true do co() end` on the first " .. case[1], function()
      local lost, out = raced([[
        local co = coroutine.wrap(function() while true do coroutine.yield() end end)
        print("ready") io.stdout:flush()
        while true do co() end
      ]], case[1], 12)
      assert.are.equal(0, lost, out)
      assert.truthy(out:find("codes=" .. case[2], 1, true), out)
      assert.is_nil(out:find("noready", 1, true), out)
    end)
  end
end)

describe("a hook runs no script code", function()
  -- the hooks that stop a task (its grace period, a signal) made the
  -- cancellation error, calling the reason's __tostring there, where no
  -- hook can stop it: the run hung, deaf to signals (killed after 30 s)
  local src = [[
    local reason = setmetatable({}, {__tostring = function()
      print("ready") io.stdout:flush()
      while true do end
    end})
    local t = braid.spawn(function() braid.sleep(10) end)
    braid.yield()
    t:cancel(reason)
    print(pcall(t.await, t))
  ]]

  -- (report_spec: a script's __tostring that braid calls is bounded also
  -- in a task without a budget; the cancelled task was abandoned for its
  -- canceller's reason at its grace period)
  it("stops a cancel reason whose __tostring never returns, without abandoning the task", function()
    local out, err, code = signalled(src, {}, "--grace 30")
    assert.are.equal(0, code, err)
    assert.are.equal("ready\nfalse\tcancelled ((table value whose __tostring failed))\n", out)
    assert.falsy(err:find("abandoned", 1, true), err)
  end)

  it("ends on SIGTERM while such a __tostring runs, with no grace period", function()
    local _, err, code = signalled(src .. "\nbraid.sleep(60)\n", {"TERM"}, "--grace 1e300")
    assert.are.equal(143, code, err)
    assert.truthy(err:find("braid: terminated", 1, true), err)
  end)
end)
