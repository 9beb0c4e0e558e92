-- braid's own standard streams at their limits: stdout whose reader has
-- gone (`braid gen.lua | head -1` ends as `lua gen.lua | head -1` does,
-- 141, with braid's cleanup), and write errors of braid.stdout on a file
-- or device (/dev/full) that reach the writer.
local braid = require "braid"
local h = require "helper"

local BIN = os.getenv("BRAID_BIN")
local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Has pid ended? Gone from /proc, or a zombie of init's (braid reaped it
-- or died: an orphan is init's to reap, and some containers' init is slow).
local function ended_now(pid, secs)
  local t0 = os.time()
  while true do
    local s = h.proc_state(pid)
    if s == nil or s == "Z" then return true end
    if os.time() - t0 > secs then return false end
    os.execute("sleep 0.02")
  end
end

-- Runs `cmd | head -1` (or `cmd | reader`; bounded: a braid that spins
-- is SIGTERMed, 143) and returns cmd's exit status, what the reader
-- printed and cmd's stderr.
local function into_head(cmd, reader)
  local dir = h.tmp()
  local st, err = dir .. ".status", dir .. ".stderr"
  local out, _, code = h.sh(("timeout -k 5 20 sh -c %s"):format(q(
    ("{ %s 2>%s; echo $? >%s; } | %s"):format(cmd, err, st, reader or "head -1"))))
  local status = tonumber(h.slurp(st) or "")
  local e = h.slurp(err) or ""
  os.remove(st)
  os.remove(err)
  assert(code == 0, "the pipeline did not end in 20 s: " .. tostring(code) .. " " .. e)
  return status, out, e
end

describe("stdout whose reader has gone (`braid gen.lua | head -1`)", function()
  -- each writer: spinning Lua code that never suspends, one that does,
  -- braid.stdout's stream, and a worker's thread
  local writers = {
    {"print, spinning", 'while true do print("y") end'},
    {"io.write, suspending", 'while true do io.write("y\\n") braid.sleep(0.001) end'},
    {"braid.stdout:write", 'while true do braid.stdout:write("y\\n") end'},
    {"print in a worker, spinning",
     'braid.worker("return {f = function() while true do print(\'y\') end end}"):call("f")'},
  }
  for _, w in ipairs(writers) do
    it("ends the runner with 141, quietly, after cleanup: " .. w[1], function()
      local marker = h.tmp()
      local script = h.script(([[
        local marker = ...
        local p = braid.process({"sleep", "30"})
        local f = io.open(marker, "w") f:write(p.pid) f:close()
        local done <close> = setmetatable({}, {__close = function(_, e)
          local f = io.open(marker, "a")
          f:write(" ", tostring(e and e.reason)) f:close()
        end})
        %s
      ]]):format(w[2]))
      local status, out, err = into_head(("%s %s %s %s"):format(RUN_ENV, BIN, script, marker))
      assert.are.equal("y\n", out)
      assert.are.equal(141, status, err)
      assert.are.equal("", err)
      local pid, reason = (h.slurp(marker) or ""):match("^(%d+) (.*)$")
      assert.are.equal("broken pipe", reason)   -- the cleanup ran
      assert.is_true(ended_now(tonumber(pid), 10), "the child survived")
      os.remove(marker)
      os.remove(script)
    end)
  end

  it("ends the runner with 141 when a braid.stdout:write waiting on the pipe finds the reader gone", function()
    -- the write's EPIPE reaches the task before the stop does: it is that
    -- stop, not a failure to report
    local status, out, err = into_head(("%s %s -e %s"):format(RUN_ENV, BIN,
      q('braid.stdout:write(("x"):rep(1 << 20)) braid.sleep(30)')), "head -c 1")
    assert.are.equal("x", out)
    assert.are.equal(141, status, err)
    assert.are.equal("", err)
  end)

  it("keeps the run's exit status when a signal came first", h.run(function()
    -- SIGTERM first: cleanup that then finds stdout gone still ends 143,
    -- "terminated", and its cleanup runs on
    local script = h.script([[
      local done <close> = setmetatable({}, {__close = function()
        for _ = 1, 1e5 do print("y") end
        io.stderr:write("cleaned\n")
      end})
      local f = io.open("/proc/self/stat")
      io.stderr:write(f:read("a"):match("^%d+"), "\n")
      f:close()
      braid.sleep(30)
    ]])
    local p <close> = braid.process({"sh", "-c", ("{ %s %s %s; echo status $? >&2; } | true"):format(
      RUN_ENV, BIN, script)}, {stderr = "pipe"})
    local pid = p:read_line_stderr()
    braid.exec({"kill", "-TERM", pid}, {check = true})
    local rest = p:read_stderr("a")
    assert.are.equal("cleaned\nbraid: terminated\nstatus 143\n", rest)
    os.remove(script)
  end))

  it("ends stock lua5.4 with the module by SIGPIPE outside braid.run, as without it", function()
    local status = into_head(("%s lua5.4 -e %s"):format(RUN_ENV,
      q('require "braid" while true do print("y") end')))
    assert.are.equal(141, status)
  end)

  it("cancels braid.run in the module (reason \"broken pipe\"); a print after it ends the process", function()
    local status, out, err = into_head(("%s lua5.4 -e %s"):format(RUN_ENV, q([[
      local braid = require "braid"
      local ok, e = pcall(braid.run, function()
        local p = braid.process({"sleep", "30"})
        io.stderr:write("pid ", p.pid, "\n")
        while true do print("y") end
      end)
      io.stderr:write(tostring(ok), " ", e.kind, " ", e.reason, "\n")
      print("after") io.stdout:flush()
      io.stderr:write("not reached\n")
    ]])))
    assert.are.equal("y\n", out)
    assert.are.equal(141, status, err)
    assert.truthy(err:match("false cancelled broken pipe\n$"), err)
    assert.is_true(ended_now(tonumber(err:match("pid (%d+)")), 10), "the child survived")
  end)

  it("still raises EPIPE writing to a child that has gone, with stdout a live pipe", function()
    local script = h.script([[
      local p <close> = braid.process({"sh", "-c", "exec <&-; sleep 30"})
      local ok, e = pcall(function()
        for _ = 1, 100 do p:write(("x"):rep(65536)) end
      end)
      print(ok, e.kind, e.code)
    ]])
    local out, err, code = h.sh(("%s %s %s | cat"):format(RUN_ENV, BIN, script))
    assert.are.equal(0, code, err)
    assert.are.equal("false\tio\tEPIPE\n", out)
    os.remove(script)
  end)
end)

describe("a signal during the cleanup of a cancelled run", function()
  -- the hook that stops spinning code raised the task's cancellation after
  -- whatever the signal was: a dump (or a broken stdout once the run ended
  -- anyway) cut the cleanup of a cancelled task short
  it("lets a SIGQUIT dump during cleanup leave the cleanup running", h.run(function()
    local script = h.script([[
      local done <close> = setmetatable({}, {__close = function()
        io.stderr:write("closing\n")
        local t = os.clock() while os.clock() - t < 1 do end
        io.stderr:write("cleaned\n")
      end})
      local f = io.open("/proc/self/stat")
      io.stderr:write(f:read("a"):match("^%d+"), "\n")
      f:close()
      braid.sleep(30)
    ]])
    local p <close> = braid.process({"sh", "-c", ("%s %s %s; echo status $? >&2"):format(
      RUN_ENV, BIN, script)}, {stderr = "pipe"})
    local pid = p:read_line_stderr()
    braid.exec({"kill", "-TERM", pid}, {check = true})
    assert.are.equal("closing", p:read_line_stderr())
    braid.exec({"kill", "-QUIT", pid}, {check = true})
    local rest = p:read_stderr("a")
    assert.truthy(rest:match("live task"), rest)
    assert.truthy(rest:match("\ncleaned\nbraid: terminated\nstatus 143\n$"), rest)
    os.remove(script)
  end))
end)

describe("braid.stdout on a file or device: a failed write is raised, never lost", function()
  -- the pump thread dropped its errno: the first write "succeeded", the
  -- next ones said EPIPE, and a script that wrote once exited 0
  local function run(src)
    local script = h.script(src)
    local out, err, code = h.sh(("{ %s %s %s >/dev/full; }"):format(RUN_ENV, BIN, script))
    os.remove(script)
    return out, err, code
  end

  it("raises ENOSPC (kind io, naming stdout:write) at the next write", function()
    local _, err, code = run([[
      braid.stdout:write("to full\n")
      local e
      for _ = 1, 500 do   -- until the pump has met the error (bounded: 5 s)
        local ok
        ok, e = pcall(braid.stdout.write, braid.stdout, "more\n")
        if not ok then break end
        e = nil
        braid.sleep(0.01)
      end
      io.stderr:write(e.kind, " ", e.code, " ", e.message, "\n")
      local ok, again = pcall(braid.stdout.write, braid.stdout, "again\n")
      io.stderr:write(tostring(ok), " ", again.code, "\n")
    ]])
    assert.are.equal(0, code, err)
    assert.are.equal("io ENOSPC stdout:write: no space left on device\nfalse ENOSPC\n", err)
  end)

  it("raises it from close, and fails the run (exit 1) when no write or close raised it", function()
    local _, err, code = run([[
      braid.stdout:write("to full\n")
      local ok, e = pcall(braid.stdout.close, braid.stdout)
      io.stderr:write(e.kind, " ", e.code, " ", e.message, "\n")
    ]])
    assert.are.equal(0, code, err)
    assert.are.equal("io ENOSPC stdout:close: no space left on device\n", err)
    _, err, code = run('braid.stdout:write("to full\\n")')
    assert.are.equal(1, code)
    assert.are.equal("braid: stdout:write: no space left on device\n", err)
    _, err, code = run('braid.stdout:write("to full\\n") os.exit(0)')
    assert.are.equal(1, code)
    assert.are.equal("braid: stdout:write: no space left on device\n", err)
  end)

  it("makes the module's braid.run raise it", function()
    local out, err, code = h.sh(("{ %s lua5.4 -e %s >/dev/full; }"):format(RUN_ENV, q([[
      local braid = require "braid"
      local ok, e = pcall(braid.run, function() braid.stdout:write("x") end)
      io.stderr:write(tostring(ok), " ", e.kind, " ", e.code, " ", e.message, "\n")
    ]])))
    assert.are.equal(0, code, err)
    assert.are.equal("false io ENOSPC stdout:write: no space left on device\n", err)
  end)

  it("still writes everything to a regular file", function()
    local path = h.tmp()
    local script = h.script([[
      for i = 1, 20000 do braid.stdout:write(("line %d\n"):format(i)) end
      braid.stdout:write(("x"):rep(3 << 20), "\n")
    ]])
    local _, err, code = h.sh(("{ %s %s %s >%s; }"):format(RUN_ENV, BIN, script, path))
    assert.are.equal(0, code, err)
    local got = h.slurp(path)
    assert.are.equal(20000, select(2, got:gsub("line %d+\n", "")))
    assert.are.equal(3 << 20, #got:match("\n(x+)\n$"))
    os.remove(script)
    os.remove(path)
  end)
end)
