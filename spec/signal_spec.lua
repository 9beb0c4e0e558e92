local braid = require "braid"
local h = require "helper"

-- This process's id, from /proc/self/stat (its first field).
local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  return pid
end

local function send(name)
  assert(os.execute("kill -" .. name .. " " .. mypid()))
end

-- Runs a script with build/braid, bounded by `timeout 20`.
local function runner(script)
  return h.sh((os.getenv("BRAID_RUN_ENV") or "") .. " timeout 20 " ..
              os.getenv("BRAID_BIN") .. " " .. script .. " </dev/null")
end

-- Awaits t, but never longer than 10 s: a lost signal fails, never hangs.
local function await(t)
  return braid.timeout(10, t.await, t)
end

describe("braid.signal", function()
  it("wait() returns the signal's name when it arrives", h.run(function()
    local w <close> = braid.signal("SIGUSR1")
    local waiter = braid.spawn(function() return w:wait() end)
    braid.yield()
    assert.are.equal("suspended", waiter:status())
    braid.spawn(send, "USR1")
    assert.are.equal("SIGUSR1", await(waiter))
  end))

  it("accepts names with or without SIG and rejects unknown or uncatchable ones", h.run(function()
    local w <close> = braid.signal("USR2")
    assert.matches("SIGUSR2", tostring(w))
    for _, bad in ipairs({"SIGNOPE", "KILL", "SIGSTOP", "usr1", ""}) do
      local ok, e = pcall(braid.signal, bad)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
    end
    local ok, e = pcall(braid.signal, 10)
    assert.are.equal("usage", e.kind)
  end))

  -- Regression (review of 2026-12-02): "USR1\0junk" gave a SIGUSR1 waiter
  -- (the name was read up to its zero byte).
  it("refuses a name with a zero byte inside, as braid.process's kill does", h.run(function()
    local ok, e = pcall(braid.signal, "USR1\0junk")
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("zero byte", e.message, 1, true)
    local p <close> = braid.process({"sleep", "30"})
    ok, e = pcall(p.kill, p, "TERM\0junk")
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.is_true(p:kill())
    p:wait()
  end))

  it("counts signals that arrive while no task waits and hands them to the next waits", h.run(function()
    local idle <close> = braid.signal("USR1")
    local sync <close> = braid.signal("USR1")
    -- `sync` has a task waiting, so once it has seen a signal the loop has
    -- read that signal for `idle` too.
    for _ = 1, 2 do
      local t = braid.spawn(function() return sync:wait() end)
      braid.yield()
      send("USR1")
      assert.are.equal("SIGUSR1", await(t))
    end
    assert.are.equal("SIGUSR1", idle:wait())
    assert.are.equal("SIGUSR1", idle:wait())
  end))

  it("wakes one waiting task per signal, in the order they started waiting", h.run(function()
    local w <close> = braid.signal("USR1")
    local log = {}
    local a = braid.spawn(function() w:wait() log[#log + 1] = "a" end)
    local b = braid.spawn(function() w:wait() log[#log + 1] = "b" end)
    braid.yield()
    send("USR1")
    await(a)
    assert.are.same({"a"}, log)
    send("USR1")
    await(b)
    assert.are.same({"a", "b"}, log)
  end))

  it("counts as something that can wake a task: a waiting waiter is no deadlock", function()
    local ok, r = pcall(braid.run, function()
      local w <close> = braid.signal("USR1")
      -- Sent from outside braid, later: until then the root only waits on
      -- the signal, with no timer and no other task.
      assert(os.execute("(sleep 0.3; kill -USR1 " .. mypid() .. ") &"))
      return w:wait()
    end)
    assert.is_true(ok, tostring(r))
    assert.are.equal("SIGUSR1", r)
  end)

  it("does not keep the loop alive while no task waits on it", function()
    local ok, e = pcall(braid.run, function()
      local w <close> = braid.signal("USR1")
      local root = braid.current()
      braid.spawn(function() root:await() end):await()
    end)
    assert.is_false(ok)
    assert.are.equal("deadlock", e.kind)
  end)

  it("lets a waiting task be cancelled, after which the waiter still works", h.run(function()
    local w <close> = braid.signal("USR1")
    local t = braid.spawn(function() return w:wait() end)
    braid.yield()
    t:cancel("enough")
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    local t2 = braid.spawn(function() return w:wait() end)
    braid.yield()
    send("USR1")
    assert.are.equal("SIGUSR1", await(t2))
  end))

  it("raises kind closed in tasks waiting when the waiter is closed, and on later waits", h.run(function()
    local w = braid.signal("USR1")
    local t = braid.spawn(function() return pcall(w.wait, w) end)
    braid.yield()
    w:close()
    w:close()   -- twice is harmless
    local ok, e = t:await()
    assert.is_false(ok)
    assert.are.equal("closed", e.kind)
    ok, e = pcall(w.wait, w)
    assert.are.equal("closed", e.kind)
  end))

  it("is closed by <close> and when the scope that made it ends", h.run(function()
    local kept
    do
      local w <close> = braid.signal("USR1")
      kept = w
    end
    local ok, e = pcall(kept.wait, kept)
    assert.are.equal("closed", e.kind)
    braid.scope(function()
      kept = braid.signal("USR2")
    end)
    ok, e = pcall(kept.wait, kept)
    assert.are.equal("closed", e.kind)
    assert.matches("closed", tostring(kept))
  end))

  it("takes Ctrl-C instead of the root when a script waits for SIGINT", function()
    local script = h.script([[
      local f = assert(io.open("/proc/self/stat"))
      local pid = f:read("n")
      f:close()
      local w <close> = braid.signal("SIGINT")
      -- os.execute ignores SIGINT while it waits (system(3)), so the kill
      -- is sent from the background, after it has returned.
      braid.spawn(function() os.execute("(sleep 0.2; kill -INT " .. pid .. ") &") end)
      print(w:wait(), braid._interrupted())
    ]])
    finally(function() os.remove(script) end)
    local out, err, code = runner(script)
    assert.are.equal("", err)
    assert.are.equal("SIGINT\tfalse\n", out)
    assert.are.equal(0, code)
  end)

  it("leaves Ctrl-C to cancel the root when no task waits for SIGINT", function()
    local script = h.script([[
      local f = assert(io.open("/proc/self/stat"))
      local pid = f:read("n")
      f:close()
      local w <close> = braid.signal("SIGINT")
      os.execute("(sleep 0.2; kill -INT " .. pid .. ") &")
      braid.sleep(10)
      print("not interrupted")
    ]])
    finally(function() os.remove(script) end)
    local out, err, code = runner(script)
    assert.are.equal("", out)
    assert.are.equal(130, code)
  end)
end)

describe("module mode after braid.run", function()
  it("gives Ctrl-C back to the host: lua5.4's 'interrupted!' error, not death by SIGINT", function()
    local script = h.script([[
      local braid = require "braid"
      braid.run(function() braid.sleep(0.01) end)
      local ok, e = pcall(function()
        io.popen("kill -INT $PPID"):close()   -- $PPID: this lua5.4
        local t0 = os.clock()
        while os.clock() - t0 < 5 do end
      end)
      print(ok, (tostring(e):gsub("^.*: ", "")))
    ]])
    finally(function() os.remove(script) end)
    local out, err, code = h.sh("LUA_CPATH='" .. os.getenv("BUILD") ..
                                "/?.so;;' timeout 20 lua5.4 " .. script)
    assert.are.equal("false\tinterrupted!\n", out, err)
    assert.are.equal(0, code)
  end)
end)
