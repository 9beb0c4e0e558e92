-- tools/valgrind_cases.lua: engine-level cases for `make valgrind`, run by
-- the runner (which calls lua_close, so what is left allocated at exit is a
-- real leak). Each case exercises one part of the engine on every path that
-- frees something: success, error, cancellation, timeout, abandonment, and
-- handles still open when their scope ends. Small sizes: valgrind runs it
-- some 30x slower.
--
--   build/braid --grace 0.3 tools/valgrind_cases.lua     (prints "N cases ok")
--   build/braid tools/valgrind_cases.lua fail           (one case that fails
--     at the top with suppressed errors: exits 1, for the error path)
local cases = {}
local function case(name, fn) cases[#cases + 1] = {name, fn} end

local function raises(kind, fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error of kind " .. kind)
  if kind == "cancelled" then assert(braid.is_cancelled(e), tostring(e))
  elseif kind == "timeout" then assert(braid.is_timeout(e), tostring(e))
  elseif kind ~= "any" then
    assert(type(e) == "table" and e.kind == kind, tostring(e))
  end
  return e
end

case("spawn, await, results and errors", function()
  local t = braid.spawn(function(a, b) braid.sleep(0.001) return a + b, "x" end, 1, 2)
  local a, b = t:await()
  assert(a == 3 and b == "x")
  local e = {}
  local bad   -- a failing child fails its scope: its own scope here
  local ok, got = pcall(braid.scope, function(s)
    bad = s:spawn(function() braid.yield() error(e) end)
    local ok2, got2 = pcall(bad.await, bad)
    assert(not ok2 and rawequal(got2, e))
    braid.sleep(10)   -- cancelled by the failure
  end)
  assert(not ok and rawequal(got, e))
  assert(bad:status() == "failed")
  local s = braid.spawn(function() braid.sleep(10) end)
  braid.yield()
  assert(s:cancel("stop"))
  raises("cancelled", s.await, s)
  for i = 1, 200 do braid.spawn(function() braid.yield() return i end) end
end)

case("scopes: fail-fast, cleanup errors, scope:cancel", function()
  local closed = 0
  local e = raises("any", braid.scope, function(s)
    for i = 1, 5 do
      s:spawn(function()
        local c <close> = setmetatable({}, {__close = function() closed = closed + 1 end})
        braid.sleep(10)
      end)
    end
    s:spawn(function()
      local c <close> = setmetatable({}, {__close = function() error("cleanup failed") end})
      braid.sleep(10)
    end)
    braid.sleep(0.001)
    error("first")
  end)
  assert(tostring(e):match("first"), tostring(e))
  assert(closed == 5)
  assert(braid.scope(function(s)
    s:spawn(function() braid.sleep(10) end)
    s:cancel("enough")
    braid.sleep(10)
  end) == nil)
end)

case("gather, race, any, map, settle, limit, timeouts", function()
  local a, b = braid.gather(function() braid.sleep(0.002) return 1 end,
                            function() return 2 end)
  assert(a == 1 and b == 2)
  local r = braid.gather(function() error("x") end, function() braid.sleep(0.001) return 3 end,
                         {settle = true})
  assert(r.ok == false)
  raises("any", braid.gather, function() braid.sleep(0.001) error("boom") end,
         function() braid.sleep(10) end)
  raises("timeout", braid.gather, function() braid.sleep(10) end, {timeout = 0.005})
  assert(braid.race(function() braid.sleep(10) end, function() return "fast" end) == "fast")
  local e = raises("all_failed", braid.any, function() error("a") end, function() error("b") end)
  assert(#e.errors == 2)
  assert(braid.any(function() error("a") end, function() braid.sleep(0.001) return "b" end) == "b")
  local res = braid.map({1, 2, 3, 4, 5, 6}, function(x) braid.sleep(0.001) return x * x end, {limit = 2})
  assert(res[6] == 36)
  local m = braid.map({1, 2, 3}, function(x) if x == 2 then error("two") end return x end, {settle = true})
  assert(m[2].ok == false and m[3].value == 3)
end)

case("timeout, nested deadlines, shield", function()
  raises("timeout", braid.timeout, 0.005, braid.sleep, 10)
  raises("timeout", braid.timeout, 0.005, function()
    local ok, e = pcall(braid.timeout, 10, braid.sleep, 10)
    assert(braid.is_cancelled(e))
    error(e)
  end)
  assert(braid.timeout(1, function() return "in time" end) == "in time")
  local cleaned = false
  local t = braid.spawn(function()
    local ok, e = pcall(braid.sleep, 10)
    braid.shield(function() braid.sleep(0.002) cleaned = true end)
    error(e)
  end)
  braid.yield()
  t:cancel()
  raises("cancelled", t.await, t)
  assert(cleaned)
  raises("timeout", braid.timeout, 0, braid.yield)
end)

case("abandonment after the grace period", function()
  local closed = 0
  braid.scope(function(s)
    s:spawn(function()
      local c <close> = setmetatable({}, {__close = function() closed = closed + 1 end})
      braid.shield(function() braid.sleep(30) end)   -- ignores the cancel
    end)
    braid.sleep(0.001)
    s:cancel()
  end, {grace = 0.02})
  assert(closed == 1, "abandoned task's <close> ran " .. closed .. " times")
end)

case("channels, semaphores, events", function()
  local ch = braid.channel()
  braid.spawn(function() for i = 1, 50 do ch:send({i}) end ch:close() end)
  local n = 0
  for v in ch:iter() do n = n + v[1] end
  assert(n == 1275)
  raises("closed", ch.send, ch, 1)
  local bc = braid.channel(4)
  for i = 1, 4 do bc:send(i) end
  local sender = braid.spawn(function() bc:send(5) end)   -- waits: full
  local receiver
  braid.yield()
  sender:cancel()
  raises("cancelled", sender.await, sender)
  local ch2 = braid.channel()
  receiver = braid.spawn(function() return ch2:recv() end)
  braid.yield()
  receiver:cancel()
  raises("cancelled", receiver.await, receiver)
  local sem = braid.semaphore(2)
  braid.map({1, 2, 3, 4, 5}, function(i)
    return sem:with(function() braid.sleep(0.001) return i end)
  end)
  local blocked = braid.spawn(function() sem:acquire() sem:acquire() sem:acquire() end)
  braid.yield()
  blocked:cancel()
  raises("cancelled", blocked.await, blocked)
  local ev = braid.event()
  local w = braid.spawn(function() ev:wait() return "set" end)
  braid.yield()
  ev:set()
  assert(w:await() == "set" and ev:is_set())
  -- A channel left with waiters when its owner ends.
  braid.scope(function(s)
    local lost = braid.channel()
    s:spawn(function() lost:recv() end)
    braid.sleep(0.001)
    s:cancel()
  end)
end)

case("user coroutines inside tasks", function()
  local gen = coroutine.wrap(function()
    for i = 1, 3 do braid.sleep(0.001) coroutine.yield(i) end
  end)
  assert(gen() == 1 and gen() == 2)
  local co = coroutine.create(function() coroutine.yield(1) braid.sleep(10) end)
  coroutine.resume(co)   -- left suspended: collected with the task
  local t = braid.spawn(function()
    local g = coroutine.wrap(function() braid.sleep(10) end)
    g()
  end)
  braid.yield()
  t:cancel()
  raises("cancelled", t.await, t)
  collectgarbage()
end)

case("exec and process", function()
  local r = braid.exec({"sh", "-c", "echo out; echo err >&2; exit 3"})
  assert(r.code == 3 and r.stdout == "out\n" and r.stderr == "err\n")
  assert(braid.exec({"cat"}, {stdin = ("x"):rep(100000)}).stdout:len() == 100000)
  raises("timeout", braid.exec, {"sleep", "10"}, {timeout = 0.05, kill_grace = 0.1})
  raises("spawn", braid.exec, {"/no/such/program"})
  raises("io", braid.exec, {"false"}, {check = true})
  do
    local p <close> = braid.process({"cat"})
    p:write("hello\n")
    assert(p:read_line() == "hello")
    p:close_stdin()
    assert(p:read_line() == nil)
    assert(p:wait() == 0)
  end
  do
    local p <close> = braid.process({"sleep", "10"}, {kill_grace = 0.1})
    local t = braid.spawn(function() return p:wait() end)
    braid.yield()
    t:cancel()
    raises("cancelled", t.await, t)
    p:kill("KILL")
    local code, sig = p:wait()
    assert(sig == "SIGKILL")
  end
  braid.scope(function(s)   -- a process still running when its scope ends
    braid.process({"sleep", "10"}, {kill_grace = 0.1})
    local p2 = braid.process({"sh", "-c", "echo a; echo b"})
    local lines = {}
    for l in p2:lines() do lines[#lines + 1] = l end
    assert(#lines == 2)
  end)
  local t = braid.spawn(function() braid.exec({"sleep", "10"}, {kill_grace = 0.1}) end)
  braid.sleep(0.02)
  t:cancel()
  raises("cancelled", t.await, t)
end)

case("tcp: echo, half-close, refused, cancelled reads, scope end", function()
  braid.scope(function(s)
    local server = braid.tcp.listen(nil, 0, function(conn)
      for line in conn:lines() do conn:write(line .. "\n") end
      conn:close()
    end)
    for i = 1, 5 do
      s:spawn(function()
        local c <close> = braid.tcp.connect("127.0.0.1", server:port(), {timeout = 5})
        c:write("hello " .. i .. "\n")
        assert(c:read_line() == "hello " .. i)
        c:shutdown()
        assert(c:read() == nil)
      end)
    end
    braid.sleep(0.001)
    local c = braid.tcp.connect("localhost", server:port())
    local reader = braid.spawn(function() return c:read() end)
    braid.yield()
    reader:cancel()
    raises("cancelled", reader.await, reader)
    c:write("still usable\n")
    assert(c:read_line() == "still usable")
    c:close()
    server:close()
  end)
  -- A port that was just free: refused.
  local port
  do
    local srv = braid.tcp.listen(nil, 0, function() end)
    port = srv:port()
    srv:close()
  end
  raises("io", braid.tcp.connect, "127.0.0.1", port)
  raises("io", braid.tcp.connect, "no-such-host.invalid", 80)
end)

case("fs", function()
  local fs = braid.fs
  local dir = os.tmpname()
  os.remove(dir)
  fs.mkdir(dir)
  fs.write_file(dir .. "/a", ("a"):rep(200000))
  fs.append_file(dir .. "/a", "b")
  assert(#fs.read_file(dir .. "/a") == 200001)
  assert(fs.stat(dir .. "/a").type == "file")
  fs.rename(dir .. "/a", dir .. "/b")
  assert(fs.list(dir)[1] == "b")
  raises("io", fs.read_file, dir .. "/missing")
  raises("io", fs.stat, dir .. "/missing")
  local t = braid.spawn(function() return fs.read_file(dir .. "/b") end)
  t:cancel()
  pcall(t.await, t)
  fs.remove(dir .. "/b")
  fs.remove(dir)
end)

case("dns", function()
  assert(#braid.dns.resolve("localhost") >= 1)
  raises("io", braid.dns.resolve, "no-such-host.invalid")
  local t = braid.spawn(function() return braid.dns.resolve("localhost") end)
  t:cancel()
  pcall(t.await, t)
end)

case("signals", function()
  local w = braid.signal("SIGUSR1")
  local t = braid.spawn(function() return w:wait() end)
  braid.yield()
  braid.exec({"sh", "-c", "kill -USR1 $PPID"})   -- $PPID: this process
  assert(t:await() == "SIGUSR1")
  w:close()
  raises("closed", w.wait, w)
  braid.scope(function()
    local w2 = braid.signal("SIGUSR2")   -- closed by its scope
    local t2 = braid.spawn(function() return w2:wait() end)
    braid.yield()
    t2:cancel()
    pcall(t2.await, t2)
  end)
end)

case("introspection and errors", function()
  local t = braid.spawn(function() braid.sleep(10) end)
  t.name = "sleeper"
  braid.yield()
  assert(#braid.tasks() >= 2)
  local dump = braid.dump()
  assert(type(dump) == "string")
  t:cancel()
  pcall(t.await, t)
  local e = raises("usage", braid.channel, -1)
  assert(type(e.traceback) == "string" and tostring(e) ~= "")
  raises("any", braid.sleep, "x")
end)

case("many timers, cancelled sleepers", function()
  braid.scope(function(s)
    for i = 1, 300 do s:spawn(function() braid.sleep((i % 7) * 0.001) end) end
  end)
  local ts = {}
  for i = 1, 100 do ts[i] = braid.spawn(function() braid.sleep(5) end) end
  braid.yield()
  for i = 1, 100 do ts[i]:cancel() end
end)

if arg[1] == "fail" then
  -- The error path at the top: a child fails, a sibling's cleanup raises
  -- too (reported as suppressed), the runner prints it all and exits 1.
  braid.scope(function(s)
    s:spawn(function()
      local c <close> = setmetatable({}, {__close = function() error("cleanup also failed") end})
      braid.sleep(10)
    end)
    braid.sleep(0.001)
    error("top failure")
  end)
end

local only = arg[1]
local n = 0
for _, c in ipairs(cases) do
  if not only or c[1]:find(only, 1, true) then
    io.write(c[1], " ... ")
    io.flush()
    c[2]()
    print("ok")
    n = n + 1
  end
end
print(n .. " cases ok")
