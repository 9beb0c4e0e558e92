-- Issue 15b: braid.exec waits for its child's exit only once both outputs
-- have ended (a waitpid, and a pidfd only when the child still runs then).
-- What exec reports and when it returns must not change with that.
local braid = require "braid"
local h = require "helper"

-- How many fds braid has open.
local function fds()
  return #braid.fs.list("/proc/self/fd")
end

describe("issue 15b: exec's exit, waited for after its outputs", function()
  it("reaps a child at once and reports its status", h.run(function()
    local r = braid.exec({"sh", "-c", "echo $$; echo err >&2; exit 4"})
    assert.are.equal(4, r.code)
    assert.are.equal("err\n", r.stderr)
    local pid = assert(tonumber(r.stdout))
    assert.is_nil(h.proc_state(pid), "child " .. pid .. " left unreaped")
  end))

  it("waits for a child that closed its outputs and runs on", h.run(function()
    local t0 = braid.now()
    local r = braid.exec({"sh", "-c", "echo $$; exec >&- 2>&-; sleep 0.3; exit 3"})
    assert.are.equal(3, r.code)
    assert.is_nil(r.signal)
    assert.is_true(braid.now() - t0 >= 0.25, "returned before the child exited")
    local pid = assert(tonumber(r.stdout))
    assert.is_nil(h.proc_state(pid), "child " .. pid .. " left unreaped")
  end))

  it("reports a signal that ends a child whose outputs were closed first", h.run(function()
    local r = braid.exec({"sh", "-c", "exec >&- 2>&-; kill -TERM $$; sleep 5"})
    assert.is_nil(r.code)
    assert.are.equal("SIGTERM", r.signal)
  end))

  it("waits for a grandchild holding the outputs; the status is the child's", h.run(function()
    local r = braid.exec({"sh", "-c", "(sleep 0.3; echo late) & echo early; exit 5"})
    assert.are.equal(5, r.code)
    assert.are.equal("early\nlate\n", r.stdout)
  end))

  it("stops a grandchild holding the outputs of a child that has exited, at the timeout", h.run(function()
    local pidfile = os.tmpname()
    -- 1 s: the shell must have written the pid first (under ASan on a
    -- busy machine a shell took up to 76 ms to start)
    local ok, e = pcall(braid.exec, {"sh", "-c", "sleep 30 & echo $! > " .. pidfile .. "; exit 0"},
                        {timeout = 1, kill_grace = 0.3})
    assert.is_false(ok)
    assert.are.equal("timeout", e.kind)
    local pid = h.read_pid(pidfile)
    os.remove(pidfile)
    local t0 = braid.now()
    while h.proc_state(pid) and h.proc_state(pid) ~= "Z" and braid.now() - t0 < 10 do
      braid.sleep(0.01)
    end
    local s = h.proc_state(pid)
    assert.is_true(s == nil or s == "Z", "grandchild " .. pid .. " still runs")
  end))

  it("captures and reaps with the outputs not piped, or only one of them", h.run(function()
    assert.are.equal(2, braid.exec({"sh", "-c", "exit 2"}, {stdout = "null", stderr = "null"}).code)
    local r = braid.exec({"sh", "-c", "echo out; echo err >&2; exit 6"}, {stderr = "null"})
    assert.are.same({6, "out\n"}, {r.code, r.stdout})
    r = braid.exec({"sh", "-c", "echo out; echo err >&2; exit 7"}, {stdout = "null"})
    assert.are.same({7, "err\n"}, {r.code, r.stderr})
  end))

  it("leaves no fd behind after many concurrent execs", h.run(function()
    braid.exec({"true"})   -- libuv keeps one fd per loop from its first stream on
    local before = fds()
    local list = {}
    for i = 1, 64 do list[i] = i end
    braid.map(list, function(i)
      -- every 4th closes its outputs first: its exit is waited for on a pidfd
      local cmd = i % 4 == 0 and {"sh", "-c", "exec >&- 2>&-; sleep 0.05"} or {"true"}
      assert.are.equal(0, braid.exec(cmd).code)
    end, {limit = 8})
    assert.are.equal(before, fds())
  end))
end)
