-- spec/worker_spec.lua: braid.worker, values crossing by copy, cancellation
-- and failure across the thread boundary (engine/io/worker.c, xcopy.c).
local braid = require "braid"
local helper = require "helper"
local run = helper.run

-- A worker's chunk used by most specs.
local SRC <const> = [[
  local braid = require "braid"
  local closed = 0
  return {
    echo = function(...) return ... end,
    count = function(...) return select("#", ...) end,
    types = function(...)
      local out = {}
      for i = 1, select("#", ...) do
        local v = select(i, ...)
        out[i] = type(v) == "number" and math.type(v) or type(v)
      end
      return out
    end,
    add = function(a, b) return a + b end,
    sleep = function(s, v) braid.sleep(s) return v end,
    boom = function() error("boom") end,
    tboom = function() error({code = 7}) end,
    timeout = function() braid.timeout(0.01, braid.sleep, 10) end,
    fn = function() return print end,
    guarded = function(started)
      local c <close> = setmetatable({}, {__close = function()
        closed = closed + 1 end})
      if started then started:send(true) end
      braid.sleep(60)
    end,
    closed = function() return closed end,
    spin = function() local i = 0 while true do i = i + 1 end end,
    fail_on2 = function(x) if x == 2 then error("two") end braid.sleep(60) end,
    spin_guarded = function(started)
      local c <close> = setmetatable({}, {__close = function()
        closed = closed + 1 end})
      if started then started:send(true) end
      local i = 0 while true do i = i + 1 end
    end,
  }
]]

-- Waits (bounded) until the worker's `closed` counter reaches n.
local function closed_reaches(w, n)
  local t0 = braid.now()
  while w:call("closed") < n do
    if braid.now() - t0 > 10 then return false end
    braid.sleep(0.01)
  end
  return true
end

-- Runs scenario (a chunk taking braid and emit, run as the root task) in
-- a braid subprocess under a hard timeout -> stdout (the lines emitted),
-- stderr, exit code. Under TSan (the cross-thread hook is what it should
-- see) a child process dies at once: it runs here, stderr unseen.
local function run_scenario(scenario)
  if (os.getenv("LD_PRELOAD") or ""):find("tsan") then
    local out = {}
    braid.run(function()
      assert(load(scenario))(braid, function(...)
        local t = table.pack(...)
        for i = 1, t.n do t[i] = tostring(t[i]) end
        out[#out + 1] = table.concat(t, "\t", 1, t.n) .. "\n"
      end)
    end)
    return table.concat(out), "", 0
  end
  local script = helper.script(("assert(load(%q))(require 'braid', print)\n")
                               :format(scenario))   -- the runner's root task
  local out, err, code = helper.sh("exec timeout -s KILL 30 env " ..
                                   (os.getenv("BRAID_RUN_ENV") or "") .. " " ..
                                   os.getenv("BRAID_BIN") .. " " .. script)
  os.remove(script)
  return out, err, code
end

-- Calls fname(started) in w and cancels the caller once the call's body
-- has begun (it sends on the shared channel started): a call cancelled
-- before its body began never runs it. Returns the caller's error.
local function cancel_started(w, fname)
  local started = braid.channel(1, {shared = true})
  local t = braid.spawn(function() return pcall(w.call, w, fname, started) end)
  started:recv()
  t:cancel()
  local ok, e = t:await()
  assert.is_false(ok)
  return e
end

-- Calls f(...), which must raise; returns the error.
local function fails(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return e
end

describe("braid.worker values", function()
  it("copies nil, booleans, integers, floats and strings unchanged", run(function()
    local w <close> = braid.worker(SRC)
    local big = string.rep("x\0y", 400000)
    local a, b, c, d, e, f, g = w:call("echo", nil, true, false, 3, 3.0, "s\0t", big)
    assert.is_nil(a)
    assert.is_true(b)
    assert.is_false(c)
    assert.equal("integer", math.type(d))
    assert.equal("float", math.type(e))
    assert.equal("s\0t", f)
    assert.equal(big, g)
    assert.equal(7, w:call("count", nil, nil, nil, nil, nil, nil, nil))
    assert.same({"integer", "float", "nil", "string"}, w:call("types", 1, 1.5, nil, "x"))
  end))

  it("rebuilds nested tables, shared sub-tables and cycles", run(function()
    local w <close> = braid.worker(SRC)
    local shared = {1, 2, 3}
    local t = {a = shared, b = shared, nested = {deep = {deeper = {"x"}}}, [1.5] = "f"}
    t.self = t
    t[shared] = "key"
    local r = w:call("echo", t)
    assert.are_not.equal(t, r)
    assert.equal(r, r.self)
    assert.equal(r.a, r.b)
    assert.same({1, 2, 3}, r.a)
    assert.equal("x", r.nested.deep.deeper[1])
    assert.equal("f", r[1.5])
    assert.equal("key", r[r.a])
    local x, y = w:call("echo", shared, shared)   -- one message: still shared
    assert.equal(x, y)
  end))

  it("does not copy metatables, except a braid.Error's", run(function()
    local w <close> = braid.worker(SRC)
    local r = w:call("echo", setmetatable({v = 1}, {__index = function() return 2 end}))
    assert.is_nil(getmetatable(r))
    assert.is_nil(r.missing)
    local e = w:call("echo", select(2, pcall(braid.sleep, "bad")))
    assert.is_true(braid.is_error(e))
  end))

  it("refuses a function, naming its path in the arguments", run(function()
    local w <close> = braid.worker(SRC)
    local e = fails(w.call, w, "echo", 1, {cb = print})
    assert.equal("usage", e.kind)
    assert.equal("args[2].cb: a function cannot cross to a worker", e.message)
    e = fails(w.call, w, "echo", {{[3] = coroutine.create(print)}})
    assert.equal("args[1][1][3]: a coroutine cannot cross to a worker", e.message)
    e = fails(w.call, w, "echo", {["not an ident"] = io.stdout})
    assert.equal('args[1]["not an ident"]: a userdata cannot cross to a worker', e.message)
    -- the worker is still usable
    assert.equal(3, w:call("add", 1, 2))
  end))

  it("refuses a function among the results", run(function()
    local w <close> = braid.worker(SRC)
    local e = fails(w.call, w, "fn")
    assert.equal("usage", e.kind)
    assert.equal("worker:call 'fn': results[1]: a function cannot cross back "
                 .. "from a worker (returned by the function defined at worker:19)",
                 e.message)
  end))

  -- An error that could not cross was replaced by the encode's error alone:
  -- no worker function, no original error, no worker traceback.
  it("names the function and keeps the error and its traceback when an error cannot cross", run(function()
    local w <close> = braid.worker([==[ return {
      e_fn = function() error({code = 1, cb = function() end}) end,
      e_big = function()
        error(setmetatable({cb = print}, {__tostring = function() return string.rep("e", 5000) end,
                                          __index = function() while true do end end}))
      end,
      e_spin = function()
        error(setmetatable({cb = print}, {__tostring = function() while true do end end}))
      end,
      e_str = function() error(string.rep("s", 3000), 0) end,
    } ]==], {max_message = 2000})
    local e = fails(w.call, w, "e_fn")
    assert.equal("usage", e.kind)
    assert.matches("^worker:call 'e_fn': error%[1%]%.cb: a function cannot cross back "
                   .. "from a worker %(the worker's error: table: 0x%x+%)$", e.message)
    assert.matches("worker:2:", e.traceback)
    e = fails(w.call, w, "e_str")
    assert.equal("limit", e.kind)
    assert.equal("max_message", e.option)
    assert.matches("^worker:call 'e_str': .*max_message.* %(the worker's error: s+%.%.%.%)$", e.message)
    assert.is_true(#e.message < 1000, e.message)   -- the text is cut
    assert.matches("worker:10:", e.traceback)
    e = fails(w.call, w, "e_big")   -- its __tostring runs, its __index not
    assert.equal("usage", e.kind)
    assert.matches("^worker:call 'e_big': error%[1%]%.cb: a function .* %(the worker's error: e+%.%.%.%)$", e.message)
    assert.matches("worker:4:", e.traceback)
    e = fails(w.call, w, "e_spin")   -- bounded
    assert.matches("%(the worker's error: %(table value whose __tostring failed%)%)$", e.message)
  end))

  it("caps depth and size with kind limit", run(function()
    local w <close> = braid.worker(SRC, {max_message = 1000, max_depth = 5})
    local deep = {}
    local t = deep
    for _ = 1, 10 do t.n = {} t = t.n end
    local e = fails(w.call, w, "echo", deep)
    assert.equal("limit", e.kind)
    assert.equal("max_depth", e.option)
    assert.equal(5, e.limit)
    e = fails(w.call, w, "echo", string.rep("x", 2000))
    assert.equal("limit", e.kind)
    assert.equal("max_message", e.option)
    assert.equal(1000, e.limit)
    assert.equal(3, w:call("add", 1, 2))
  end))
end)

describe("braid.worker", function()
  it("runs many calls at once and returns each its own results", run(function()
    local w <close> = braid.worker(SRC)
    local items = {}
    for i = 1, 50 do items[i] = i end
    local r = braid.map(items, function(i) return w:call("sleep", 0.01 * (i % 5), i * 2) end)
    for i = 1, 50 do assert.equal(i * 2, r[i]) end
  end))

  it("loads a module name, a file path or a chunk", run(function()
    local base = os.tmpname()   -- /tmp/lua_XXXXXX: also a module name
    os.remove(base)
    local dir, mod = base:match("^(.*)/([^/]+)$")
    local file = dir .. "/" .. mod .. ".lua"
    local f = assert(io.open(file, "w"))
    f:write("return {hi = function(x) return 'hi ' .. x end}")
    f:close()
    local saved = package.path
    package.path = dir .. "/?.lua;" .. package.path
    local ok, err = pcall(function()
      local m <close> = braid.worker(mod)
      assert.equal("hi m", m:call("hi", "m"))
      local p <close> = braid.worker(file)
      assert.equal("hi p", p:call("hi", "p"))
      local c <close> = braid.worker("return {hi = function(x) return 'yo ' .. x end}")
      assert.equal("yo c", c:call("hi", "c"))
    end)
    package.path = saved
    os.remove(file)
    assert(ok, err)
  end))

  -- The chunk crossed as a C string: one holding a zero byte (Lua loads
  -- it) was refused as "not enough memory".
  it("loads a chunk holding a zero byte", run(function()
    local w <close> = braid.worker("return {f = function() return 'a\0b' end}")
    assert.equal("a\0b", w:call("f"))
  end))

  it("refuses os.exit inside a worker: the call fails, the process and the worker go on",
     run(function()
    local w <close> = braid.worker([[return {
      bye = function() os.exit(3) end, hi = function() return "hi" end }]])
    local e = fails(w.call, w, "bye")
    assert.equal("usage", e.kind)
    assert.matches("os.exit: not available in a worker", e.message)
    assert.equal("hi", w:call("hi"))
  end))

  it("raises the load error at each call", run(function()
    local w <close> = braid.worker("return {f = function() end} +")
    local e = fails(w.call, w, "f")
    assert.equal("worker", e.kind)
    assert.matches("worker:1: unexpected symbol", e.message)
    e = fails(w.call, w, "f")   -- the same error again, not a stale state
    assert.equal("worker", e.kind)
    assert.matches("worker:1: unexpected symbol", e.message)
    local n <close> = braid.worker("return 42")
    e = fails(n.call, n, "f")
    assert.matches("a table of functions expected", e.message)
  end))

  it("refuses an unknown function", run(function()
    local w <close> = braid.worker(SRC)
    local e = fails(w.call, w, "nope")
    assert.equal("usage", e.kind)
    assert.matches("no function 'nope'", e.message)
  end))

  it("raises a worker's string error as kind worker with its traceback", run(function()
    local w <close> = braid.worker(SRC)
    local e = fails(w.call, w, "boom")
    assert.equal("worker", e.kind)
    assert.equal("worker:16: boom", e.value)
    assert.matches("boom", e.message)
    assert.matches("worker:16", e.traceback)
  end))

  it("copies a table error, adding the worker's traceback", run(function()
    local w <close> = braid.worker(SRC)
    local e = fails(w.call, w, "tboom")
    assert.equal(7, e.code)
    assert.matches("worker:17", e.traceback)
  end))

  it("keeps a braid.Error's kind", run(function()
    local w <close> = braid.worker(SRC)
    local e = fails(w.call, w, "timeout")
    assert.is_true(braid.is_timeout(e))
  end))

  it("cancels the worker's task when the caller is cancelled; its <close> runs", run(function()
    local w <close> = braid.worker(SRC)
    assert.is_true(braid.is_cancelled(cancel_started(w, "guarded")))
    assert.is_true(closed_reaches(w, 1))
  end))

  it("bounds a cancelled call's cleanup by the worker's grace period", run(function()
    local w <close> = braid.worker([[
      local braid = require "braid"
      return {stubborn = function()
        local c <close> = setmetatable({}, {__close = function()
          braid.shield(braid.sleep, 60) end})
        braid.sleep(60)
      end}]], {grace = 0.1})
    local e = fails(braid.timeout, 0.05, w.call, w, "stubborn")
    assert.is_true(braid.is_timeout(e))
    local t0 = braid.now()
    w:close()   -- waits for the call's task: abandoned at its grace period
    assert.is_true(braid.now() - t0 < 30)
  end))

  it("names an abandoned call's task by its function in the report", function()
    -- a child lua5.4 with libtsan preloaded dies at once (exit 11, no
    -- output) under `make SANITIZE=thread test-threads`: checked by the
    -- plain and ASan runs
    if (os.getenv("LD_PRELOAD") or ""):find("tsan") then return end
    local p = os.tmpname()
    local f = assert(io.open(p, "w"))
    f:write([=[
      local braid = require "braid"
      braid.run(function()
      local w <close> = braid.worker([[
        local braid = require "braid"
        return {stubborn = function(started)
          local c <close> = setmetatable({}, {__close = function()
            braid.shield(braid.sleep, 60) end})
          started:send(true)
          braid.sleep(60)
        end}]], {grace = 0.1})
      -- cancelled once its body began: one cancelled before never runs
      local started = braid.channel(1, {shared = true})
      local t = braid.spawn(function() return pcall(w.call, w, "stubborn", started) end)
      started:recv()
      t:cancel()
      w:close()
      end)
    ]=])
    f:close()
    -- stock lua5.4 and the module, as this spec runs (also under TSan)
    local _, err, code = helper.sh("lua5.4 " .. p .. " </dev/null")
    os.remove(p)
    assert.equal(0, code, err)
    assert.truthy(err:find("task %d+ %(worker:call 'stubborn', spawned at worker:2%) abandoned"), err)
    assert.is_nil(err:find("[C]:-1", 1, true))
  end)

  it("interrupts a worker's task spinning in Lua", run(function()
    local w <close> = braid.worker(SRC)
    assert.is_true(braid.is_cancelled(cancel_started(w, "spin_guarded")))
    assert.is_true(closed_reaches(w, 1))
    assert.equal(3, w:call("add", 1, 2))   -- the worker goes on
  end))

  -- harden-h1: only a call's own task was hooked, so a task it spawned
  -- that spins kept the worker (and close, and the run) waiting forever.
  it("reaches a task a call spawned that spins in Lua: cancel and close stop it", function()
    local scenario = [=[
      local braid, emit = ...
      local w = braid.worker([[
        local braid = require "braid"
        return {
          spawn_spin = function()
            braid.spawn(function() local i = 0 while true do i = i + 1 end end)
            braid.sleep(60)
          end,
          nested_spin = function()
            braid.spawn(function()
              coroutine.wrap(function() local i = 0 while true do i = i + 1 end end)()
            end)
            braid.sleep(60)
          end,
          add = function(a, b) return a + b end,
        }]], {grace = 60})   -- no grace period ends these
      for _, f in ipairs{"spawn_spin", "nested_spin"} do
        local ok, e = pcall(braid.timeout, 0.1, w.call, w, f)
        emit(f, ok, braid.is_timeout(e), w:call("add", 1, 2))
      end
      local t = braid.spawn(function() return pcall(w.call, w, "spawn_spin") end)
      braid.sleep(0.1)
      local t0 = braid.now()
      w:close()
      local ok, e = t:await()
      emit("close", tostring(w), braid.now() - t0 < 10, ok, e.kind)
    ]=]
    local out, err, code = run_scenario(scenario)
    assert.are.equal(0, code, err)
    assert.are.equal("spawn_spin\tfalse\ttrue\t3\nnested_spin\tfalse\ttrue\t3\n" ..
                     "close\tbraid.Worker (closed)\ttrue\tfalse\tclosed\n", out)
  end)

  -- A call's task cancelled before its first resume (queued behind one
  -- that spins, or stopped by close) had its cancel taken, so nothing
  -- hooked it again: its body spun until the grace period abandoned it.
  it("cancels at once a spinning call cancelled before it started", function()
    local out, err, code = run_scenario([=[
      local braid, emit = ...
      local SRC = "return {spin = function() while true do end end}"
      local w = braid.worker(SRC, {grace = 5})
      local a = braid.spawn(function() return pcall(w.call, w, "spin") end)
      local b = braid.spawn(function() return pcall(w.call, w, "spin") end)
      braid.sleep(0.1)
      local t0 = braid.now()
      a:cancel(); b:cancel(); a:await(); b:await()
      w:close()
      emit("cancel", braid.now() - t0 < 2)
      w = braid.worker(SRC, {grace = 5})
      a = braid.spawn(function() return pcall(w.call, w, "spin") end)
      b = braid.spawn(function() return pcall(w.call, w, "spin") end)
      braid.sleep(0.1)
      t0 = braid.now()
      a:cancel()
      w:close()
      emit("close", braid.now() - t0 < 2, select(2, b:await()).kind)
    ]=])
    assert.are.equal(0, code, err)
    assert.are.equal("cancel\ttrue\nclose\ttrue\tclosed\n", out)
    assert.is_nil(err:find("abandoned"), err)
  end)

  it("close cancels calls in flight (kind closed) and refuses new ones", run(function()
    local w = braid.worker(SRC)
    local t = braid.spawn(function() return pcall(w.call, w, "sleep", 60) end)
    local s = braid.spawn(function() return pcall(w.call, w, "spin") end)
    braid.sleep(0.05)
    w:close()
    local ok, e = t:await()
    assert.is_false(ok)
    assert.equal("closed", e.kind)
    ok, e = s:await()
    assert.is_false(ok)
    assert.equal("closed", e.kind)
    e = fails(w.call, w, "add", 1, 2)
    assert.equal("closed", e.kind)
    w:close()   -- harmless
  end))

  -- harden-h1: a second close made while the first waited returned at
  -- once, with the worker's thread still running.
  -- a call whose cleanup outlasts the grace period: closing waits for it
  local STUBBORN = [[
      local braid = require "braid"
      return {stubborn = function(started)
        local c <close> = setmetatable({}, {__close = function()
          braid.shield(braid.sleep, 60) end})
        started:send(true)
        braid.sleep(60)
      end}]]
  -- a stubborn call in w, running once this returns
  local function stubborn(w)
    local started = braid.channel(1, {shared = true})
    local call = braid.spawn(function()
      return pcall(w.call, w, "stubborn", started)
    end)
    started:recv()
    return call
  end
  it("makes every concurrent close wait until the thread has ended", run(function()
    local w = braid.worker(STUBBORN, {grace = 0.3})
    local call = stubborn(w)
    local states = {}
    local closers = {}
    for i = 1, 3 do
      closers[i] = braid.spawn(function()
        w:close()
        states[i] = tostring(w)
      end)
    end
    for i = 1, 3 do closers[i]:await() end
    assert.are.same({"braid.Worker (closed)", "braid.Worker (closed)",
                     "braid.Worker (closed)"}, states)
    assert.is_false((call:await()))
    -- a cancelled close returns at once, and the next one still waits
    local w2 = braid.worker(STUBBORN, {grace = 0.3})
    local call2 = stubborn(w2)
    braid.move_on(0.01, w2.close, w2)   -- a courtesy wait: cut short, no error
    assert.are.equal("braid.Worker (closing)", tostring(w2))
    w2:close()
    assert.are.equal("braid.Worker (closed)", tostring(w2))
    call2:await()
  end))

  it("is stopped by the end of the scope it was made in", run(function()
    local w
    braid.scope(function()
      w = braid.worker(SRC)
      assert.equal(3, w:call("add", 1, 2))
    end)
    local e = fails(w.call, w, "add", 1, 2)
    assert.equal("closed", e.kind)
  end))

  it("stops a chunk that spins while it loads", run(function()
    local w = braid.worker("while true do end")
    braid.sleep(0.02)
    w:close()
    assert.matches("closed", tostring(w))
  end))

  -- The load caught the close's cancellation and spun on: nothing hooked
  -- it again, so close (and the end of the run after SIGTERM, which joins
  -- the thread) waited forever. Its grace period bounds it as a task's.
  local CATCH_SPIN = "while true do pcall(function() while true do end end) end return {}"

  it("stops a chunk that catches the close and spins, at its grace period", function()
    local out, err = run_scenario(([[
      local braid, emit = ...
      for _, src in ipairs({%q, %q}) do
        local w = braid.worker(src, {grace = 0.5})
        braid.sleep(0.1)
        local t0 = braid.now()
        w:close()
        emit("closed", tostring(w), braid.now() - t0 < 10)
      end
    ]]):format(CATCH_SPIN, "coroutine.wrap(function() " .. CATCH_SPIN .. " end)()"))
    assert.equal(("closed\tbraid.Worker (closed)\ttrue\n"):rep(2), out, err)
  end)

  it("exits 143 on SIGTERM while a chunk that catches the close spins", function()
    if (os.getenv("LD_PRELOAD") or ""):find("tsan") then return end
    local script = helper.script(([[
      io.stdout:setvbuf("no")
      local w = braid.worker(%q, {grace = 0.5})
      print("ready")
      braid.sleep(100)
    ]]):format(CATCH_SPIN))
    local out = os.tmpname()
    local _, err, code = helper.sh(table.concat({"{",
      ("%s %s %s >%s &"):format(os.getenv("BRAID_RUN_ENV") or "",
                                os.getenv("BRAID_BIN"), script, out),
      "pid=$!", "(sleep 30; kill -KILL $pid) 2>/dev/null & guard=$!",
      ("for _ in $(seq 1 600); do grep -q ready %s && break; sleep 0.05; done"):format(out),
      "sleep 0.1; kill -TERM $pid",
      "wait $pid; code=$?; kill $guard 2>/dev/null; exit $code", "}"}, "\n"))
    os.remove(out)
    os.remove(script)
    assert.equal(143, code, err)   -- 137: killed by the guard after 30 s
    assert.matches("abandoned its chunk's load", err)
  end)

  -- A worker's results decoded into a caller over its memory limit (a
  -- worker calling a worker) raised a bare "not enough memory".
  it("raises kind memory naming worker:call when the caller has no memory for the results", run(function()
    local w <close> = braid.worker([==[
      local braid = require "braid"
      return {run = function()
        local inner <close> = braid.worker(
          "return {make = function(n) return string.rep('x', n) end}",
          {memory_limit = 4 * 1024 * 1024})
        local fill = {}
        while pcall(function()
          fill[#fill + 1] = string.rep(tostring(#fill), 256 * 1024)
        end) do end
        fill[#fill] = nil   -- less room left than the results take
        local ok, e = pcall(inner.call, inner, "make", 1536 * 1024)
        fill = nil
        collectgarbage()
        return ok, type(e) == "table" and e.kind or type(e), tostring(e),
               #inner:call("make", 1536 * 1024)
      end}]==], {memory_limit = 16 * 1024 * 1024})
    local ok, kind, msg, n = w:call("run")
    assert.is_false(ok)
    assert.equal("memory", kind, msg)
    assert.matches("^worker:call: not enough memory for a message of %d+ bytes", msg)
    assert.equal(1536 * 1024, n)
  end))

  -- The worker's copy of the arguments ran out of its memory limit: a
  -- bare "not enough memory" of kind worker.
  it("raises kind memory naming the function when the worker has no memory for the arguments", run(function()
    local w <close> = braid.worker("return {len = function(s) return #s end}",
                                   {memory_limit = 4 * 1024 * 1024})
    local e = fails(w.call, w, "len", string.rep("a", 8 * 1024 * 1024))
    assert.equal("memory", e.kind, e.message)
    assert.matches("^worker:call 'len': not enough memory in the worker for a message of %d+ bytes", e.message)
    assert.equal(3, w:call("len", "abc"))
  end))

  it("can start workers of its own", run(function()
    local w <close> = braid.worker([[
      local braid = require "braid"
      return {outer = function(x)
        local inner <close> = braid.worker("return {f = function(y) return y * 10 end}")
        return inner:call("f", x) + 1
      end}]])
    assert.equal(41, w:call("outer", 4))
  end))

  it("refuses bad arguments", run(function()
    local e = fails(braid.worker, 42)
    assert.equal("usage", e.kind)
    e = fails(braid.worker, SRC, {bogus = 1})
    assert.equal("usage", e.kind)
    local w <close> = braid.worker(SRC)
    e = fails(w.call, w, 1)
    assert.equal("usage", e.kind)
    e = fails(w.call, w, "add\0junk", 1, 2)   -- not add under another name
    assert.equal("usage", e.kind)
    assert.matches("zero byte", e.message)
  end))

  it("counts the cores", function()
    assert.is_true(braid.cpu_count() >= 1)
  end)
end)

describe("braid.pool", function()
  it("spreads calls over its workers and maps a list", run(function()
    local p <close> = braid.pool(2, SRC)
    assert.equal(3, p:call("add", 1, 2))
    local items = {}
    for i = 1, 40 do items[i] = i end
    local r = p:map(items, "add")   -- add(item, i)
    for i = 1, 40 do assert.equal(2 * i, r[i]) end
  end))

  it("defaults to one worker per core", run(function()
    local p <close> = braid.pool(SRC)
    assert.equal(braid.cpu_count(), #p.workers)
  end))

  it("refuses a bad size", run(function()
    local e = fails(braid.pool, 0, SRC)
    assert.equal("usage", e.kind)
  end))

  it("raises a worker's error from pool:map and stops the others", run(function()
    local p <close> = braid.pool(2, SRC)
    local t0 = braid.now()
    local e = fails(p.map, p, {1, 2, 3}, "fail_on2")
    assert.equal("worker", e.kind)
    assert.matches("two", e.message)
    assert.is_true(braid.now() - t0 < 30)   -- the sleeping ones were cancelled
  end))
end)

-- review "prims" 9: pool:map's own timeout was said in braid.map's name
describe("pool:map's timeout", function()
  it("is said in pool:map's name; braid.map's with a module in braid.map's", run(function()
    local p <close> = braid.pool(2, SRC)
    local e = fails(p.map, p, {0.01, 5}, "sleep", {timeout = 0.1})
    assert.is_true(braid.is_timeout(e))
    assert.equal("pool:map timed out after 0.1 s (1 of 2 unfinished)", e.message)
    e = fails(braid.map, {0.01, 5}, "sleep", {module = SRC, workers = 2, timeout = 0.1})
    assert.equal("braid.map timed out after 0.1 s (1 of 2 unfinished)", e.message)
    -- a member's own timeout error is raised unchanged
    e = fails(p.map, p, {1}, "timeout", {timeout = 5})
    assert.is_true(braid.is_timeout(e))
    assert.matches("^timed out after 0.01 s", e.message)
  end))
end)

describe("braid.map with workers", function()
  it("runs a named function in a pool made for the call", run(function()
    local r = braid.map({1, 2, 3}, "add", {workers = 2, module = SRC})
    assert.equal(2, r[1])
    assert.equal(4, r[2])
    assert.equal(6, r[3])
  end))

  it("needs opts.module for a function name", run(function()
    local e = fails(braid.map, {1}, "add", {workers = 2})
    assert.equal("usage", e.kind)
  end))
end)

-- review-lua 6, 8: a pool's errors spoke as worker:call or braid.pool,
-- a pool:map member's without a position, wrong option types were
-- ignored, and 2.0 workers were refused
describe("pool errors name what the script called", function()
  -- the message of f's error, called from this file (a position)
  local function msg(f)
    local ok, e = pcall(f)
    assert.is_false(ok, "expected an error")
    assert.equal("usage", e.kind, tostring(e))
    return e.message
  end
  local HERE = "^spec/worker_spec%.lua:%d+: "

  it("pool:call and pool:map", run(function()
    local p <close> = braid.pool(2, SRC)
    assert.matches(HERE .. "bad argument #2 to 'pool:call' %(string expected, got nil%)$",
                   msg(function() local r = p:call() return r end))
    assert.matches(HERE .. "pool:call: the worker has no function 'nosuch'$",
                   msg(function() local r = p:call("nosuch") return r end))
    assert.matches(HERE .. "pool:map: the worker has no function 'nosuch'$",
                   msg(function() local r = p:map({1, 2}, "nosuch") return r end))
    assert.matches(HERE .. "bad argument #3 to 'pool:map' %(string expected, got number%)$",
                   msg(function() local r = p:map({1}, 5) return r end))
    assert.matches(HERE .. "bad argument #4 to 'pool:map' %(options table expected: a plain " ..
                   "table without a metatable, got number%)$",
                   msg(function() local r = p:map({1}, "add", 5) return r end))
    assert.matches(HERE .. "bad option 'limit' to 'pool:map'",
                   msg(function() local r = p:map({1}, "add", {limit = 0}) return r end))
    assert.matches(HERE .. "bad argument #4 to 'pool:map' %(unknown option 'bogus'%)$",
                   msg(function() local r = p:map({1}, "add", {bogus = 1}) return r end))
  end))

  it("braid.map with a function name, and braid.pool", run(function()
    assert.matches(HERE .. "bad option 'workers' to 'braid.map' %(positive integer expected, got 0%)$",
                   msg(function() local r = braid.map({1}, "add", {module = SRC, workers = 0}) return r end))
    assert.matches(HERE .. "bad argument #3 to 'braid.map' %(options table expected: a plain " ..
                   "table without a metatable, got a table with a metatable%)$",
                   msg(function() local r = braid.map({1}, "add", setmetatable({}, {})) return r end))
    assert.matches(HERE .. "braid.map: the worker has no function 'nosuch'$",
                   msg(function() local r = braid.map({1}, "nosuch", {module = SRC, workers = 1}) return r end))
    assert.matches(HERE .. "bad argument #1 to 'braid.pool' %(positive integer expected, got 1.5%)$",
                   msg(function() local r = braid.pool(1.5, SRC) return r end))
    -- braid.worker's checks, in the name of what the script called
    assert.matches(HERE .. "bad argument #2 to 'braid.pool' %(string expected, got number%)$",
                   msg(function() local r = braid.pool(2, 5) return r end))
    assert.matches(HERE .. "bad argument #2 to 'braid.pool' %(unknown option 'bogus'%)$",
                   msg(function() local r = braid.pool(SRC, {bogus = 1}) return r end))
    assert.matches(HERE .. "bad option 'module' to 'braid.map' %(string expected, got number%)$",
                   msg(function() local r = braid.map({1}, "add", {module = 5}) return r end))
    -- as Lua's own integer arguments: 2.0 counts as 2
    local p <close> = braid.pool(2.0, SRC)
    assert.equal(2, #p.workers)
    local r = braid.map({1, 2}, "add", {module = SRC, workers = 2.0})
    assert.equal(2, r[1])
    assert.equal(4, r[2])
  end))
end)

describe("braid.worker children", function()
  it("spawns children from a worker and from the owner at the same time (issue 15c's vfork)", run(function()
    local w <close> = braid.worker([[
      local braid = require "braid"
      return {run = function(n)
        local out = {}
        for i = 1, n do out[i] = braid.exec({"echo", "w" .. i}).stdout end
        return table.concat(out)
      end}
    ]])
    local n = 40
    local from_worker, from_main = braid.gather(
      function() return w:call("run", n) end,
      function()
        local out = {}
        for i = 1, n do out[i] = braid.exec({"echo", "m" .. i}).stdout end
        return table.concat(out)
      end)
    local ww, mm = {}, {}
    for i = 1, n do ww[i], mm[i] = "w" .. i .. "\n", "m" .. i .. "\n" end
    assert.are.equal(table.concat(ww), from_worker)
    assert.are.equal(table.concat(mm), from_main)
  end))
end)

-- Leaving at once reaches a worker's children too: the exit hooks of every
-- engine are on one list (engine/core/interrupt.c). Before, a second
-- SIGTERM ran the main engine's hooks only, and the group of a child a
-- worker started (its members ignoring SIGTERM) kept running.
describe("braid.worker children at a hard exit", function()
  local BIN = os.getenv("BRAID_BIN")
  local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

  local function alive(pid)
    local s = helper.proc_state(pid)
    return s ~= nil and s ~= "Z"
  end

  -- Runs braid on script with the sanitizer's settings (BRAID_RUN_ENV);
  -- under TSan with nothing preloaded (a preloaded libtsan kills a child
  -- shell or lua5.4 at once; the braid binary links it) and no report of
  -- the worker's thread left unjoined, which _exit does by design.
  local function start(script)
    local env = {}
    if (os.getenv("LD_PRELOAD") or ""):find("tsan") then
      env.LD_PRELOAD = ""
      env.TSAN_OPTIONS = "halt_on_error=1 report_thread_leaks=0 suppressions=" ..
                         BIN:match("^(.*)/build/") .. "/tools/tsan.supp"
    else
      for k, v in RUN_ENV:gmatch("([%w_]+)=(%S+)") do env[k] = v end
    end
    return braid.process({BIN, script}, {env_add = env, stderr = "pipe"})
  end

  -- the main thread waiting in the loop, or stuck in C code, where the
  -- signal handler itself leaves (interrupt.c); "ready" once it is in C
  -- (from a shell that waits 0.5 s: the first signal must not find it in
  -- Lua code, where the hook would take it). Not under TSan, which runs a
  -- handler only once the thread enters its runtime: one looping in
  -- uninstrumented C (liblua) never does.
  local cases = {{"", "print('ready') io.stdout:flush() braid.sleep(60)"}}
  if not (os.getenv("LD_PRELOAD") or ""):find("tsan") then
    cases[2] = {" while the main thread is stuck in C",
                "os.execute('(sleep 0.5; echo ready) &') " ..
                "local _ = ('x'):rep(1e6):find('.-y')"}
  end
  for _, case in ipairs(cases) do
    it("a second SIGTERM kills the group of a child started in a worker" .. case[1], run(function()
      local pidfile = helper.tmp()
      -- two members that ignore SIGTERM; their pids once both run
      local cmd = ("trap '' TERM; sleep 1071 & a=$!; sleep 1081 & " ..
                   "echo $a $! >%s.part; mv %s.part %s; wait"):format(pidfile, pidfile, pidfile)
      local script = helper.script(([[
        local braid = require "braid"
        local w <close> = braid.worker([==[
          local braid = require "braid"
          return {run = function(cmd)
            return braid.exec({"sh", "-c", cmd}, {kill_grace = 60})
          end}
        ]==])
        braid.spawn(function() w:call("run", %q) end)
        while not io.open(%q) do braid.sleep(0.01) end
        %s
      ]]):format(cmd, pidfile, case[2]))
      local code, err
      local ok, e = pcall(braid.timeout, 30, function()
        local p <close> = start(script)
        assert.are.equal("ready", p:read_line())
        p:kill("SIGTERM")
        braid.sleep(0.3)   -- past the 0.1 s in which a repeat is the same one
        p:kill("SIGTERM")
        code = p:wait()
        err = p:read_stderr("a")
      end)
      os.remove(script)
      local pids = {}
      for pid in (helper.slurp(pidfile) or ""):gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
      os.remove(pidfile)
      -- a member dies at once from SIGKILL; give it 10 s, then clean up
      local t0, left = braid.now(), {}
      repeat
        left = {}
        for _, pid in ipairs(pids) do if alive(pid) then left[#left + 1] = pid end end
        if #left > 0 then braid.sleep(0.01) end
      until #left == 0 or braid.now() - t0 > 10
      for _, pid in ipairs(left) do braid.exec({"kill", "-KILL", tostring(pid)}, {check = false}) end
      assert(ok, e)
      assert.are.equal(143, code, err)
      assert.truthy(err:find("terminated again, exiting", 1, true), err)
      assert.are.equal(2, #pids, "the group's pids were not written")
      assert.are.same({}, left, "a worker child's group member still runs")
    end))
  end
end)

-- A message between threads is its sender's memory until it is taken
-- (engine/core/memory.c, braid__xcharge). Before, a worker with a
-- memory_limit of 10 MB queued 300 MB in a shared channel.
describe("braid.worker memory_limit and messages in flight", function()
  local MSRC <const> = [[
    local braid = require "braid"
    return {
      flood = function(ch, n)
        local s = ("z"):rep(1e6)
        local ok, e = pcall(function() for _ = 1, n do ch:send(s) end end)
        return ok, e
      end,
      three = function(n) local s = ("z"):rep(n) return s, s, s end,
      nest = function(n)
        -- its limit is reserved from this worker's 10 MB
        local w2 <close> = braid.worker("return {f = function(...) return select('#', ...) end}",
                                        {memory_limit = 2.5e6})
        local s = ("y"):rep(n)
        return w2:call("f", s, s, s)
      end,
    }
  ]]

  it("counts values queued in a shared channel until they are taken", run(function()
    local ch = braid.channel(1000, {shared = true})
    local w <close> = braid.worker(MSRC, {memory_limit = 10e6})
    for round = 1, 2 do   -- the second: the taken bytes were given back
      local ok, e = w:call("flood", ch, 300)
      assert.is_false(ok, "round " .. round .. ": 300 MB queued")
      assert.equal("memory", e.kind)
      assert.truthy(e.message:find("channel:send: not enough memory", 1, true), e.message)
      local n = ch:len()
      assert.is_true(n >= 1 and n <= 10, "round " .. round .. ": " .. n .. " queued")
      for _ = 1, n do assert.equal(1e6, #ch:recv()) end
    end
  end))

  it("counts a call's results and arguments against their sender's limit", run(function()
    local w <close> = braid.worker(MSRC, {memory_limit = 10e6})
    local ok, e = pcall(w.call, w, "three", 3e6)   -- 9 MB of results
    assert.is_false(ok)
    assert.equal("memory", e.kind)
    assert.truthy(e.message:find("worker:call 'three': not enough memory", 1, true), e.message)
    assert.truthy(e.message:find("back from a worker", 1, true), e.message)
    assert.equal(3, select("#", w:call("three", 1e6)))
    ok, e = pcall(w.call, w, "nest", 3e6)   -- 9 MB of arguments, to a worker
    assert.is_false(ok)
    assert.equal("memory", e.kind)
    assert.truthy(e.message:find("to a worker", 1, true), e.message)
    assert.equal(3, w:call("nest", 5e5))
  end))
end)
