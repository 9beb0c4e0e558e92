local braid = require "braid"
local h = require "helper"

local state, gone_within = h.proc_state, h.gone_within

-- A child that ignores SIGTERM and says "ready" once the trap is set.
local STUBBORN = {"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"}

describe("braid.process", function()
  it("streams lines both ways with cat: write, read_line, close_stdin", h.run(function()
    local p <close> = braid.process({"cat"})
    assert.is_true(math.type(p.pid) == "integer" and p.pid > 0)
    assert.is_not_nil(state(p.pid))
    assert.are.equal(p, p:write("a\nb\n"))
    assert.are.equal("a", p:read_line())
    assert.are.equal("b", p:read_line())
    p:write("no newline")
    p:close_stdin()
    assert.are.equal("no newline", p:read_line())
    assert.is_nil(p:read_line())
    assert.is_nil(p:read_line())
    assert.are.same({0, nil}, {p:wait()})
  end))

  it("write(...) writes every argument, strings and numbers, as file:write does", h.run(function()
    local p <close> = braid.process({"cat"})
    assert.are.equal(p, p:write("a", "b", 1, "\n"))
    p:close_stdin()
    assert.are.equal("ab1\n", p:read())
    local ok, e = pcall(p.write, p, "a", {})
    assert.is_false(ok)
    assert.matches("string expected", tostring(e))
  end))

  it("iterates over stdout with lines()", h.run(function()
    local p <close> = braid.process({"sh", "-c", "printf '1\\n\\n3\\n'"})
    local got = {}
    for l in p:lines() do got[#got + 1] = l end
    assert.are.same({"1", "", "3"}, got)
  end))

  it("read() returns the rest of stdout, then the empty string", h.run(function()
    local p <close> = braid.process({"sh", "-c", "echo hello; echo world"})
    assert.are.equal("hello", p:read_line())
    assert.are.equal("world\n", p:read())
    assert.are.equal("", p:read())
    assert.are.equal(0, p:wait())
  end))

  it("writes with back-pressure while another task reads, 10 MB each way", h.run(function()
    local p <close> = braid.process({"cat"})
    local data = string.rep("line of text\n", 800000)
    local writer = braid.spawn(function()
      p:write(data)
      p:close_stdin()
    end)
    local out = p:read()
    writer:await()
    assert.are.equal(#data, #out)
    assert.is_true(out == data)
    assert.are.equal(0, p:wait())
  end))

  it("waits for the exit code; a child blocked on a full pipe still exits", h.run(function()
    local p <close> = braid.process({"sh", "-c", "head -c 3000000 /dev/zero; exit 7"})
    assert.are.same({7, nil}, {braid.timeout(30, p.wait, p)})
    assert.are.equal(3000000, #p:read())
  end))

  it("kill() sends SIGTERM by default, or the signal named, and is false once exited", h.run(function()
    local p <close> = braid.process({"sleep", "30"})
    assert.is_true(p:kill())
    assert.are.same({nil, "SIGTERM"}, {p:wait()})
    assert.is_false(p:kill())
    local q <close> = braid.process({"sleep", "30"})
    assert.is_true(q:kill("KILL"))
    assert.are.same({nil, "SIGKILL"}, {q:wait()})
    local r <close> = braid.process({"sleep", "30"})
    assert.is_true(r:kill(2))
    assert.are.same({nil, "SIGINT"}, {r:wait()})
    local ok, e = pcall(r.kill, r, "SIGNOPE")
    assert.are.equal("usage", e.kind)
  end))

  -- SIGSYS is what a seccomp filter kills a program with; IOT and POLL are
  -- other names of ABRT and IO, accepted and never reported
  it("names every signal a child can die of, and takes other names and 9.0", h.run(function()
    for name, want in pairs({SYS = "SIGSYS", SIGIO = "SIGIO", IOT = "SIGABRT",
                             POLL = "SIGIO", SIGPWR = "SIGPWR"}) do
      local p <close> = braid.process({"sleep", "30"})
      assert.is_true(p:kill(name))
      assert.are.same({nil, want}, {p:wait()})
    end
    local p <close> = braid.process({"sleep", "30"})
    assert.is_true(p:kill(15.0))
    assert.are.same({nil, "SIGTERM"}, {p:wait()})
    local ok, e = pcall(p.kill, p, 9.5)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("bad argument #%d to 'proc:kill' %(signal number %(an integer%) or name expected%)", e.message)
    ok, e = pcall(p.kill, p, 65)
    assert.matches("signal number out of range %(0 to 64%)", e.message)
  end))

  it("cancelling a read only stops that wait: the process keeps running", h.run(function()
    local p <close> = braid.process({"cat"})
    local t = braid.spawn(p.read_line, p)
    braid.yield()
    assert.are.equal("suspended", t:status())
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    assert.is_not_nil(state(p.pid))
    p:write("still here\n")
    assert.are.equal("still here", p:read_line())
  end))

  it("cancelling a wait only stops that wait", h.run(function()
    local p <close> = braid.process({"cat"})
    local t = braid.spawn(p.wait, p)
    braid.yield()
    t:cancel()
    assert.is_true(braid.is_cancelled(select(2, pcall(t.await, t))))
    assert.is_true(state(p.pid) ~= nil and state(p.pid) ~= "Z")
    p:close_stdin()
    assert.are.equal(0, p:wait())
  end))

  it("refuses a second concurrent reader and writes after close_stdin", h.run(function()
    local p <close> = braid.process({"cat"})
    local t = braid.spawn(p.read_line, p)
    braid.yield()
    local ok, e = pcall(p.read_line, p)
    assert.are.equal("usage", e.kind)
    p:close_stdin()
    assert.is_nil(t:await())
    ok, e = pcall(p.write, p, "x")
    assert.are.equal("closed", e.kind)
  end))

  it("is stopped and reaped when a <close> block is left", h.run(function()
    local pid, proc
    do
      local p <close> = braid.process({"sleep", "30"})
      pid, proc = p.pid, p
      assert.is_not_nil(state(pid))
    end
    assert.is_nil(state(pid))
    assert.are.same({nil, "SIGTERM"}, {proc:wait()})
  end))

  it("is stopped when a <close> block is left by an error", h.run(function()
    local pid
    local ok, e = pcall(function()
      local p <close> = braid.process({"sleep", "30"})
      pid = p.pid
      error("boom")
    end)
    assert.are.equal("boom", e:match("boom"))
    assert.is_true(gone_within(pid, 5))
  end))

  it("SIGKILLs a child that ignores SIGTERM after kill_grace", h.run(function()
    local p <close> = braid.process(STUBBORN, {kill_grace = 0.2})
    assert.are.equal("ready", p:read_line())
    local t0 = braid.now()
    p:close()
    local dt = braid.now() - t0
    assert.is_true(dt >= 0.15 and dt < 5, "took " .. dt)
    assert.are.same({nil, "SIGKILL"}, {p:wait()})
    assert.is_nil(state(p.pid))
  end))

  it("left running when its scope ends, is stopped the same way", h.run(function()
    local p
    braid.scope(function()
      p = braid.process({"sleep", "30"})
    end)
    assert.are.same({nil, "SIGTERM"}, {braid.timeout(5, p.wait, p)})
    assert.is_true(gone_within(p.pid, 5))
    -- a task's own scope too
    local q = braid.spawn(function() return braid.process({"sleep", "30"}) end):await()
    assert.are.same({nil, "SIGTERM"}, {braid.timeout(5, q.wait, q)})
  end))

  it("is stopped when its scope fails", h.run(function()
    local p
    local ok, e = pcall(braid.scope, function(s)
      p = braid.process({"sleep", "30"})
      s:spawn(function() error("fail") end)
      braid.sleep(30)
    end)
    assert.matches("fail", e)
    assert.are.same({nil, "SIGTERM"}, {braid.timeout(5, p.wait, p)})
  end))

  it("keeps the engine running until a stubborn child is killed and reaped", function()
    local pid
    braid.run(function()
      local p = braid.process(STUBBORN, {kill_grace = 0.2})
      assert.are.equal("ready", p:read_line())
      pid = p.pid
    end)
    assert.is_nil(state(pid))
  end)

  it("never signals the number of its child's group once that group is empty (pid reuse)", function()
    -- In a pid namespace of its own (safe for the machine): braid's child
    -- exits with its output unread, then an unrelated group takes its number.
    if not os.execute("unshare -Urpf --mount-proc true 2>/dev/null") then
      pending("needs unshare (user and pid namespaces)")
      return
    end
    local dir = h.tmp()
    assert(os.execute("mkdir " .. dir))
    local f = assert(io.open(dir .. "/s.lua", "w"))
    f:write([[
      local p = braid.process({"sh", "-c", "exec head -c 70000 /dev/zero"})
      braid.sleep(0.5)   -- it exits and is reaped; its stdout is never read
      local f = io.open("pid.tmp", "w") f:write(p.pid) f:close()
      os.rename("pid.tmp", "pid")
      braid.sleep(1)     -- then the scope ends: p is stopped
    ]])
    f:close()
    f = assert(io.open(dir .. "/t.sh", "w"))
    f:write(([[
      cd %s
      %s s.lua & B=$!
      for i in $(seq 100); do [ -f pid ] && break; sleep 0.05; done
      echo $(($(cat pid) - 1)) > /proc/sys/kernel/ns_last_pid
      setsid sleep 100 & V=$!
      [ "$V" = "$(cat pid)" ] || echo "reuse not arranged: $V"
      wait $B
      if kill -0 $V 2>/dev/null; then echo "victim alive"; kill $V; else echo "victim killed"; fi
    ]]):format(dir, os.getenv("BRAID_BIN")))
    f:close()
    local out, err = h.sh("timeout 30 unshare -Urpf --mount-proc sh " .. dir .. "/t.sh")
    os.execute("rm -r " .. dir)
    assert.matches("victim alive", out, 1, true)
    assert.is_nil(out:find("reuse not arranged", 1, true), out)
  end)

  it("wakes a stopped child with its SIGTERM, so its handler runs before any SIGKILL", h.run(function()
    local p = braid.process({"sh", "-c", "trap 'exit 7' TERM; echo ready; kill -STOP $$; echo resumed"},
                            {kill_grace = 30})
    assert.are.equal("ready", p:read_line())
    while state(p.pid) ~= "T" do braid.sleep(0.01) end   -- stopped
    local t0 = braid.now()
    p:close()
    assert.are.same({7, nil}, {p:wait()})
    assert.is_true(braid.now() - t0 < 10, "waited for the SIGKILL")
  end))

  it("refuses a FIFO nobody reads as stdout at once, and a path with a zero byte", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir .. " && mkfifo " .. dir .. "/fifo"))
    local script = h.script(([[
      print(pcall(braid.exec, {"echo", "hi"}, {stdout = %q}))
      print(pcall(braid.process, {"echo", "hi"}, {stderr = %q}))
      print(pcall(braid.exec, {"echo", "hi"}, {stdout = "out\0.txt"}))
    ]]):format(dir .. "/fifo", dir .. "/fifo"))
    -- SIGKILL: a braid blocked in open() on the loop hears no other signal
    local out, err, code = h.sh(("timeout -s KILL 20 %s %s"):format(os.getenv("BRAID_BIN"), script))
    os.remove(script)
    os.execute("rm -r " .. dir)
    assert.are.equal(0, code, err)
    local a, b, c = out:match("^([^\n]*)\n([^\n]*)\n([^\n]*)\n$")
    assert.matches("^false\tbraid.exec: cannot open '.*/fifo' for the child's stdout: nobody reads it", a)
    assert.matches("^false\tbraid.process: cannot open '.*/fifo' for the child's stderr: nobody reads it", b)
    assert.matches("^false\tbad option 'stdout' to 'braid.exec' %(a path must not contain a zero byte%)", c)
  end)

  it("raises kind 'spawn' with the code when the program cannot start", h.run(function()
    local ok, e = pcall(braid.process, {"no-such-program-braid"})
    assert.are.equal("spawn", e.kind)
    assert.are.equal("ENOENT", e.code)
    assert.matches("no%-such%-program%-braid", e.message)
  end))

  it("takes cwd and env", h.run(function()
    local p <close> = braid.process({"sh", "-c", "pwd; echo $X"}, {cwd = "/", env = {X = "y"}})
    assert.are.equal("/\ny\n", p:read())
  end))

  -- Regression (review of the suspend-API rewrite): between a reader's
  -- wake-up and its run, a second reader was let in and took the line, so
  -- the first got nil ("end of output") while the child still wrote.
  it("keeps a woken reader's line for it: another reader is refused until it ran", h.run(function()
    local p <close> = braid.process({"sh", "-c", "read x; echo one; read x; echo two"})
    local a_got, b_tries, b_errors = "unset", 0, 0
    local a = braid.spawn(function() a_got = p:read_line() end)
    local b = braid.spawn(function()
      while a:status() ~= "ok" do
        b_tries = b_tries + 1
        local ok, e = pcall(p.read_line, p)
        if ok then error("B took the line " .. tostring(e)) end
        assert.matches("another task is reading", e.message)
        b_errors = b_errors + 1
        if b_tries == 1 then p:write("go\n") end   -- let the line come now
        braid.yield()
      end
    end)
    a:await()
    b:await()
    assert.are.equal("one", a_got)
    assert.is_true(b_errors >= 2)   -- also refused after A was woken
    p:write("go\n")
    assert.are.equal("two", p:read_line())
  end))
end)
