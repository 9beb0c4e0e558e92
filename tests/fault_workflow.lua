-- fault_workflow.lua: one braid.run that uses every primitive, for
-- tests/fault_test.c, which runs it once per allocation N with the Nth
-- allocation failing. Run as a chunk with two arguments: a scratch
-- directory and a function that sends this process a signal.
--
-- Every error the workflow expects is caught and checked; anything else
-- (above all "not enough memory") is raised again unchanged, so the run
-- either succeeds or raises the memory error.
local dir, kill = ...
local braid = require "braid"

local MEM <const> = "not enough memory"

-- A memory error hidden inside a braid error (any's `errors`, a cancel's
-- `reason`) is raised instead: it is the outcome that matters.
local function unhide(e)
  if type(e) == "string" and e:find(MEM, 1, true) then error(e, 0) end
  if type(e) ~= "table" then return end
  if type(e.message) == "string" and e.message:find(MEM, 1, true) then
    error(e, 0)
  end
  unhide(e.reason)
  for _, sub in ipairs(type(e.errors) == "table" and e.errors or {}) do
    unhide(sub)
  end
end

-- Calls f(...), which must fail with an error for which is(e) holds;
-- any other error is raised again.
local function expect(is, f, ...)
  local ok, e = pcall(f, ...)
  if ok then error("expected an error, got none", 0) end
  unhide(e)
  if not is(e) then error(e, 0) end
  return e
end

local function kind(k)
  return function(e) return type(e) == "table" and e.kind == k end
end

local function check(v, what)
  if not v then error("check failed: " .. what, 0) end
end

local function tasks_and_groups()
  local t = braid.spawn(function(a, b) braid.sleep(0.01) return a + b end, 1, 2)
  check(t:await() == 3, "await")
  local a, b = braid.gather(function() braid.sleep(0.01) return 1 end,
                            function() return 2 end)
  check(a == 1 and b == 2, "gather")
  check(braid.race(function() braid.sleep(1) return 1 end,
                   function() braid.sleep(0.01) return 2 end) == 2, "race")
  check(braid.any(function() error("no", 0) end,
                  function() braid.sleep(0.01) return 3 end) == 3, "any")
  expect(kind("all_failed"), braid.any, function() error("x", 0) end)
  local squares = braid.map({1, 2, 3, 4, 5}, function(x)
    braid.sleep(0.001 * x)
    return x * x
  end, {limit = 2})
  check(#squares == 5 and squares[5] == 25, "map")
  local settled = braid.map({1, 2, 3}, function(x)   -- kept as members end
    braid.sleep(0.001 * x)
    if x == 2 then error("two", 0) end
    return x, -x
  end, {limit = 2, settle = true})
  check(settled[3].n == 2 and settled[2].error == "two", "settled map")
  expect(kind("timeout"), braid.timeout, 0.01, braid.sleep, 1)
  check(braid.timeout(1, function() return "in time" end) == "in time",
        "timeout")
  local ended = 0
  braid.scope(function(s)
    s:spawn(function() braid.sleep(0.01) ended = ended + 1 end)
    s:spawn(function() ended = ended + 1 end)
  end)
  check(ended == 2, "scope")
  braid.scope(function(s)
    s:spawn(braid.sleep, 10)
    braid.sleep(0.001)
    s:cancel("enough")
  end)
  local sleeper = braid.spawn(braid.sleep, 10)
  braid.yield()
  sleeper:cancel("stop")
  expect(kind("cancelled"), sleeper.await, sleeper)
  -- shield: cleanup that waits while its task is being cancelled
  local cleaned = false
  local victim = braid.spawn(function()
    local ok, e = pcall(braid.sleep, 10)
    braid.shield(function() braid.sleep(0.01) cleaned = true end)
    error(e, 0)
  end)
  braid.yield()
  victim:cancel()
  expect(kind("cancelled"), victim.await, victim)
  check(cleaned, "shield")
  -- failures: fail-fast cancels the sibling, the error object is raised
  -- unchanged
  local boom = setmetatable({}, {__tostring = function() return "boom" end})
  local e = expect(function(v) return v == boom end, braid.gather,
                   function() braid.sleep(0.01) error(boom) end,
                   function() braid.sleep(10) end)
  check(rawequal(e, boom), "error object")
  expect(function(v) return v == boom end, braid.scope, function(s)
    s:spawn(braid.sleep, 10)
    s:spawn(function() error(boom) end)
  end)
  local err = braid.Error.new{kind = "mine", message = "a braid error"}
  check(rawequal(expect(kind("mine"), braid.gather, function() error(err) end),
                 err), "braid.Error")
end

local function coordination()
  local ch = braid.channel(2)
  braid.spawn(function()
    for i = 1, 5 do ch:send(i) end
    ch:close()
  end)
  local sum = 0
  for v in ch:iter() do sum = sum + v end
  check(sum == 15, "channel")
  expect(kind("closed"), ch.send, ch, 1)
  local rendezvous = braid.channel()
  braid.spawn(rendezvous.send, rendezvous, "hi")
  check(rendezvous:recv() == "hi", "rendezvous")
  local sem, inside, most = braid.semaphore(2), 0, 0
  braid.map({1, 2, 3, 4}, function()
    sem:with(function()
      inside = inside + 1
      most = math.max(most, inside)
      braid.sleep(0.001)
      inside = inside - 1
    end)
  end)
  check(most == 2, "semaphore")
  local ev = braid.event()
  local waiter = braid.spawn(function() ev:wait() return "set" end)
  braid.sleep(0.001)
  ev:set()
  check(waiter:await() == "set" and ev:is_set(), "event")
end

local function processes()
  check(braid.exec({"true"}).code == 0, "exec true")
  check(braid.exec({"cat"}, {stdin = "hello"}).stdout == "hello", "exec cat")
  expect(kind("spawn"), braid.exec, {dir .. "/no-such-program"})
  local p <close> = braid.process({"cat"})
  p:write("line\n")
  check(p:read_line() == "line", "process read_line")
  p:close_stdin()
  check(p:read_line() == nil, "process end")
  check(p:wait() == 0, "process wait")
end

local function files()
  local fs = braid.fs
  local path = dir .. "/file"
  fs.write_file(path, "data")
  fs.append_file(path, "+more")
  check(fs.read_file(path) == "data+more", "read_file")
  check(fs.stat(path).size == 9, "stat")
  check(#fs.list(dir) == 1, "list")
  fs.remove(path)
  expect(kind("io"), fs.read_file, path)
end

local function network()
  local srv = braid.tcp.listen("127.0.0.1", 0, function(s)
    local line = s:read_line()
    s:write(line .. "!\n")
    s:close()
  end)
  local c <close> = braid.tcp.connect("127.0.0.1", srv:port())
  c:write("hi\n")
  check(c:read_line() == "hi!", "tcp")
  c:close()
  srv:close()
  -- braid.http: libcurl's transfer on braid's loop, its response object
  local web = braid.tcp.listen("127.0.0.1", 0, function(s)
    repeat local line = s:read_line() until line == "" or line == nil
    s:write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok")
    s:close()
  end)
  local res = braid.http.get("http://127.0.0.1:" .. web:port() .. "/")
  check(res.status == 200 and res.body == "ok" and res.headers["x-a"] == "1", "http")
  web:close()
  if braid.dns and braid.dns.resolve then
    check(#braid.dns.resolve("localhost") > 0, "dns")
  end
end

local function signals()
  local w <close> = braid.signal("SIGUSR1")
  local t = braid.spawn(w.wait, w)
  braid.yield()
  kill()
  check(t:await() == "SIGUSR1", "signal")
end

return braid.run(function()
  tasks_and_groups()
  coordination()
  braid.gather(processes, files, network, signals)
  return "done"
end, {clock = "virtual"})
