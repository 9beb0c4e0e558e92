-- spec/names_spec.lua (issue 12): every error names the function as the
-- script wrote it: `braid.fs.read_file`, `braid.tcp.connect`; methods as
-- `object:method` with the object named as docs/API.md names it
-- (`channel:send`, `task:await`, `waiter:wait`). A method's self is
-- argument #1.
--
-- EXPECT lists every public function and method with the messages that
-- apply to it, each checked in its own `it`:
--   outside   called outside braid.run: "<name>: not inside a braid task"
--   nosuspend called inside a task from a table.sort comparator, where Lua
--             cannot yield: "<name>: cannot suspend here" (only functions
--             that may suspend; the case sets up the state that makes
--             them wait: an empty channel, a task still running...)
--   badarg    {n, case}: a wrong argument: "bad argument #n to '<name>'"
--   option    {key, case[, "outside"]}: a bad option: "... '<key>' to
--             '<name>'" (inside a task unless "outside" is given)
--   also      {{kind, text, case}, ...}: other errors of the function, of
--             that kind, inside a task: "<name>: <text>" (text a pattern)
-- A case is function(f, call): f is the function found in the module,
-- call(thunk) runs thunk where the situation says and checks the error.
-- A function with no entry but `none` raises none of these (a reason is
-- given). The first test fails when the module has a function or method
-- that EXPECT does not list, so none can be added without its names.
local braid = require "braid"

-- The object each metatable stands for, as docs/API.md names it.
local OBJECTS = {
  ["braid.Task"] = "task", ["braid.Scope"] = "scope",
  ["braid.Channel"] = "channel", ["braid.Semaphore"] = "semaphore",
  ["braid.Event"] = "event", ["braid.Signal"] = "waiter",
  ["braid.Process"] = "proc", ["braid.TcpStream"] = "stream",
  ["braid.TcpServer"] = "server", ["braid.Progress"] = "progress",
  ["braid.Ticker"] = "ticker", ["braid.Worker"] = "worker",
  ["braid.Lock"] = "lock", ["braid.UdpSocket"] = "sock",
  ["braid.Watcher"] = "watcher", ["braid.File"] = "file",
  ["braid.HttpResponse"] = "res", ["braid.StdStream"] = "stdin",
}

-- ---- finding every public function and method ----

-- The methods table behind a metatable's __index (a table, or a function
-- holding it as an upvalue, for objects that also have fields).
local function methods_of(mt)
  local index = rawget(mt, "__index")
  if type(index) == "table" then return index end
  if type(index) == "function" then
    for i = 1, 255 do
      local name, v = debug.getupvalue(index, i)
      if name == nil then break end
      if type(v) == "table" then return v end
    end
  end
end

-- name -> function, for every function of the module (braid.x, braid.fs.x,
-- braid.Error.new, ...) and every method of braid's objects (channel:send).
-- Names starting with "_" are private; unknown object types are listed
-- under their metatable's name, so that they show up as missing.
-- Objects whose methods speak as another object's (a shared channel's as
-- channel:send ...): their names are the other's entries; their messages
-- are checked in their own spec (spec/xchan_spec.lua).
local SAME_NAMES = {["braid.SharedChannel"] = true}

local function discover()
  local found, method_tables = {}, {}
  for tname, mt in pairs(debug.getregistry()) do
    if type(tname) == "string" and tname:match("^braid%.") and
       type(mt) == "table" then
      local methods = methods_of(mt)
      if methods then
        method_tables[methods] = true
        local object = OBJECTS[tname] or tname
        for k, v in pairs(methods) do
          if type(v) == "function" and not SAME_NAMES[tname] then
            found[object .. ":" .. k] = v
          end
        end
      end
    end
  end
  for k, v in pairs(braid) do
    if type(k) == "string" and not k:match("^_") then
      if type(v) == "function" then
        found["braid." .. k] = v
      elseif type(v) == "table" and not method_tables[v] then
        for k2, v2 in pairs(v) do
          if type(v2) == "function" and not k2:match("^_") then
            found["braid." .. k .. "." .. k2] = v2
          end
        end
      end
    end
  end
  return found
end

-- ---- what each situation checks ----

local function escape(s) return (s:gsub("%p", "%%%0")) end

-- The message must hold `want` exactly: at its start or after the
-- position prefix ("file:line: "), or, for quoted names, as quoted.
local function holds(message, want, quoted)
  if quoted then return message:find(want, 1, true) ~= nil end
  return message:find("^" .. escape(want)) ~= nil or
         message:find(": " .. escape(want)) ~= nil
end

local function in_sort(thunk)
  return pcall(table.sort, {2, 1}, function(a, b) thunk() return a < b end)
end

local SITUATIONS = {
  outside = {task = false, run = pcall,
             want = function(name) return name .. ": not inside a braid task" end},
  nosuspend = {task = true, run = in_sort,
               want = function(name) return name .. ": cannot suspend here" end},
  badarg = {task = true, run = pcall, quoted = true,
            want = function(name, n)
              return ("bad argument #%d to '%s'"):format(n, name)
            end},
  option = {task = true, run = pcall, quoted = true,
            want = function(name, key)
              return ("'%s' to '%s'"):format(key, name)
            end},
}

-- call(thunk) for one situation: runs thunk there and checks the error.
local function caller(name, sit, extra, kind, text)
  local s = SITUATIONS[sit]
  local want = not text and s.want(name, extra)
  local calls = 0
  local function call(thunk)
    calls = calls + 1
    local ok, e = (s.run or pcall)(thunk)
    assert(not ok, name .. " raised nothing")
    assert(braid.is_error(e), name .. " raised a " .. type(e) .. ": " ..
           tostring(e))
    assert.are.equal(kind or "usage", e.kind, e.message)
    if text then
      assert(e.message:find(escape(name) .. ": " .. text),
             ("%q does not hold %q"):format(e.message, name .. ": " .. text))
    else
      assert(holds(e.message, want, s.quoted),
             ("%q does not hold %q"):format(e.message, want))
    end
  end
  return call, function() return calls end
end

-- ---- the expectations ----

local function fn() end
local NAN = 0 / 0

-- A task that is still running, cancelled (and awaited) by done().
local function running_task()
  local t = braid.spawn(braid.sleep, 3600)
  return t, function() t:cancel() pcall(t.await, t) end
end

-- A task that has ended, from a run of its own (called outside braid.run).
local function ended_task()
  local t
  braid.run(function() t = braid.spawn(fn) end)
  return t
end

-- A connected stream and its server (the handler waits for the end).
local function with_stream(body)
  local srv <close> = braid.tcp.listen("127.0.0.1", 0, function(s)
    pcall(s.read, s)
  end)
  local c <close> = braid.tcp.connect("127.0.0.1", srv:port())
  body(c, srv)
end

-- An HTTP response opened from a server of its own that sends the headers
-- and then nothing (the handler waits for the end).
local function with_response(body)
  local srv <close> = braid.tcp.listen("127.0.0.1", 0, function(s)
    repeat local line = s:read_line() until line == "" or line == nil
    s:write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    pcall(s.read, s)
  end)
  local res <close> = braid.http.open{url = "http://127.0.0.1:" .. srv:port() .. "/"}
  body(res)
end

local NOWHERE <const> = "http://127.0.0.1:1/"

local function with_proc(body)
  local p <close> = braid.process({"cat"})
  body(p)
end

local function with_worker(body)
  local w <close> = braid.worker("return {f = function() end}")
  body(w)
end

local function self_is(bad)
  return function(f, call) call(function() f(bad) end) end
end

local EXPECT = {
  -- tasks
  ["braid.run"] = {
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"grace", function(f, call)   -- inside a task: already running
      call(function() f(fn, {grace = NAN}) end)
    end, "outside"},
    also = {{"usage", "braid is already running", function(f, call)
      call(function() f(fn) end)
    end}},
  },
  ["braid.spawn"] = {   -- never suspends
    outside = function(f, call) call(function() f(fn) end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["braid.yield"] = {   -- takes no arguments
    outside = function(f, call) call(f) end,
    nosuspend = function(f, call) call(f) end,
  },
  ["braid.sleep"] = {
    outside = function(f, call) call(function() f(1) end) end,
    nosuspend = function(f, call) call(function() f(1) end) end,
    badarg = {1, function(f, call) call(function() f("x") end) end},
  },
  ["braid.current"] = {none = "raises nothing; nil outside a task"},
  ["braid.sleep_until"] = {
    outside = function(f, call) call(function() f(1) end) end,
    nosuspend = function(f, call) call(function() f(braid.now() + 1) end) end,
    badarg = {1, function(f, call) call(function() f("x") end) end},
  },
  ["braid.move_on"] = {
    outside = function(f, call) call(function() f(1, fn) end) end,
    nosuspend = function(f, call) call(function() f(1, fn) end) end,
    badarg = {2, function(f, call) call(function() f(1, 42) end) end},
  },
  ["braid.ticker"] = {   -- never suspends
    outside = function(f, call) call(function() f(1) end) end,
    badarg = {1, function(f, call) call(function() f(0) end) end},
  },
  ["ticker:wait"] = {
    outside = function(f, call)
      local t
      braid.run(function() t = braid.ticker(1) end)
      call(function() f(t) end)
    end,
    nosuspend = function(f, call)
      local t <close> = braid.ticker(3600)
      call(function() f(t) end)
    end,
    badarg = {1, self_is(42)},
    also = {{"usage", "another task waits on this ticker", function(f, call)
      local t <close> = braid.ticker(3600)
      local w = braid.spawn(f, t)
      braid.yield()
      call(function() f(t) end)
      w:cancel()
      pcall(w.await, w)
    end}},
  },
  ["ticker:close"] = {badarg = {1, self_is(42)}},
  ["braid.clock"] = {none = "takes no arguments, works anywhere"},
  ["braid.pid"] = {none = "takes no arguments, works anywhere"},
  ["braid.now"] = {none = "raises nothing"},
  ["braid.tasks"] = {none = "raises nothing"},
  ["braid.dump"] = {none = "raises nothing"},
  ["braid.is_error"] = {none = "takes any value"},
  ["braid.is_timeout"] = {none = "takes any value"},
  ["braid.is_cancelled"] = {none = "takes any value"},
  ["braid.Error.new"] = {
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["task:await"] = {
    outside = function(f, call)
      local t = ended_task()
      call(function() f(t) end)
    end,
    nosuspend = function(f, call)
      local t, done = running_task()
      call(function() f(t) end)
      done()
    end,
    badarg = {1, self_is(42)},
    also = {{"usage", "a task cannot await itself", function(f, call)
      call(function() f(braid.current()) end)
    end}},
  },
  ["task:cancel"] = {badarg = {1, self_is("x")}},
  ["task:status"] = {badarg = {1, self_is({})}},
  ["task:done"] = {badarg = {1, self_is(nil)}},
  ["task:result"] = {
    badarg = {1, self_is(42)},
    also = {{"usage", "task %d+ has not ended", function(f, call)
      local t, done = running_task()
      call(function() f(t) end)
      done()
    end}},
  },

  -- scopes, deadlines, groups
  ["braid.scope"] = {
    outside = function(f, call) call(function() f(fn) end) end,
    nosuspend = function(f, call) call(function() f(fn) end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"grace", function(f, call)
      call(function() f(fn, {grace = NAN}) end)
    end},
  },
  ["braid.shield"] = {
    outside = function(f, call) call(function() f(fn) end) end,
    nosuspend = function(f, call) call(function() f(fn) end) end,
    badarg = {1, function(f, call) call(function() f("x") end) end},
  },
  ["braid.timeout"] = {
    outside = function(f, call) call(function() f(1, fn) end) end,
    nosuspend = function(f, call) call(function() f(1, fn) end) end,
    badarg = {2, function(f, call) call(function() f(1, 42) end) end},
  },
  ["braid.gather"] = {
    outside = function(f, call) call(function() f(fn) end) end,
    nosuspend = function(f, call) call(function() f(fn) end) end,
    badarg = {2, function(f, call) call(function() f(fn, 42) end) end},
    option = {"limit", function(f, call)
      call(function() f(fn, {limit = 0}) end)
    end},
    also = {{"usage", "a task cannot wait for itself", function(f, call)
      call(function() f(braid.current()) end)
    end}},
  },
  ["braid.race"] = {
    outside = function(f, call) call(function() f(fn) end) end,
    nosuspend = function(f, call) call(function() f(fn) end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"timeout", function(f, call)
      call(function() f(fn, {timeout = "x"}) end)
    end},
  },
  ["braid.any"] = {
    outside = function(f, call) call(function() f(fn) end) end,
    nosuspend = function(f, call) call(function() f(fn) end) end,
    badarg = {1, function(f, call) call(function() f(true) end) end},
    option = {"grace", function(f, call)
      call(function() f(fn, {grace = NAN}) end)
    end},
  },
  ["braid.map"] = {
    outside = function(f, call) call(function() f({1}, fn) end) end,
    nosuspend = function(f, call) call(function() f({1}, fn) end) end,
    badarg = {1, function(f, call) call(function() f(42, fn) end) end},
    option = {"limit", function(f, call)
      call(function() f({1}, fn, {limit = -1}) end)
    end},
  },
  ["scope:spawn"] = {   -- never suspends; a scope object ends inside its task
    badarg = {1, self_is(42)},
    also = {{"usage", "the scope has ended", function(f, call)
      local kept
      braid.scope(function(s) kept = s end)
      call(function() f(kept, fn) end)
    end}},
  },
  ["scope:cancel"] = {badarg = {1, self_is(42)}},

  -- progress (issue 18)
  ["braid.progress"] = {   -- never suspends
    outside = function(f, call) call(function() f(3) end) end,
    badarg = {1, function(f, call) call(function() f("x") end) end},
  },
  ["progress:add"] = {badarg = {1, self_is(42)}},
  ["progress:fail"] = {badarg = {1, self_is(42)}},
  ["progress:done"] = {badarg = {1, self_is(42)}},

  -- coordination
  ["braid.channel"] = {   -- works anywhere, never suspends
    badarg = {1, function(f, call) call(function() f("x") end) end},
  },
  ["braid.semaphore"] = {
    badarg = {1, function(f, call) call(function() f({}) end) end},
  },
  ["braid.event"] = {none = "takes no arguments, works anywhere"},
  ["channel:send"] = {
    outside = function(f, call) call(function() f(braid.channel(), 1) end) end,
    nosuspend = function(f, call)   -- a rendezvous with no receiver
      call(function() f(braid.channel(), 1) end)
    end,
    badarg = {1, self_is(42)},
    also = {{"closed", "the channel is closed", function(f, call)
      local ch = braid.channel(1)
      ch:close()
      call(function() f(ch, 1) end)
    end}},
  },
  ["channel:recv"] = {
    outside = function(f, call) call(function() f(braid.channel()) end) end,
    nosuspend = function(f, call) call(function() f(braid.channel(1)) end) end,
    badarg = {1, self_is(braid.semaphore(1))},
  },
  ["channel:iter"] = {   -- the iterator it returns carries its name
    outside = function(f, call)
      local next_value, ch = f(braid.channel())
      call(function() next_value(ch) end)
    end,
    nosuspend = function(f, call)
      local next_value, ch = f(braid.channel(1))
      call(function() next_value(ch) end)
    end,
    badarg = {1, self_is(nil)},
  },
  ["channel:close"] = {badarg = {1, self_is(42)}},
  ["braid.select"] = {
    outside = function(f, call)
      call(function() f({{braid.channel(), "recv"}}) end)
    end,
    nosuspend = function(f, call)   -- nothing ready, no default
      call(function() f({{braid.channel(), "recv"}}) end)
    end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"timeout", function(f, call)
      call(function() f({{braid.channel(), "recv"}, timeout = NAN}) end)
    end},
    also = {{"closed", "case 2 sends on a channel that is closed",
             function(f, call)
      local ch = braid.channel(1)
      ch:close()
      call(function() f({{braid.channel(), "recv"}, {ch, "send", 1}}) end)
    end}},
  },
  ["channel:len"] = {badarg = {1, self_is(42)}},
  ["semaphore:acquire"] = {
    outside = function(f, call) call(function() f(braid.semaphore(1)) end) end,
    nosuspend = function(f, call) call(function() f(braid.semaphore(0)) end) end,
    badarg = {1, self_is(braid.channel())},
  },
  ["semaphore:with"] = {
    outside = function(f, call)
      call(function() f(braid.semaphore(1), fn) end)
    end,
    nosuspend = function(f, call)
      call(function() f(braid.semaphore(0), fn) end)
    end,
    badarg = {2, function(f, call)
      call(function() f(braid.semaphore(1), 42) end)
    end},
  },
  ["semaphore:release"] = {
    badarg = {1, self_is(42)},
    also = {{"usage", "released more often than acquired", function(f, call)
      call(function() f(braid.semaphore(1)) end)
    end}},
  },
  ["braid.lock"] = {none = "takes no arguments, works anywhere"},
  ["lock:acquire"] = {
    outside = function(f, call) call(function() f(braid.lock()) end) end,
    nosuspend = function(f, call)
      local l = braid.lock()
      braid.spawn(l.acquire, l)
      braid.yield()
      call(function() f(l) end)
    end,
    badarg = {1, self_is(braid.semaphore(1))},
    also = {{"usage", "this task holds the lock already", function(f, call)
      local l = braid.lock()
      l:acquire()
      call(function() f(l) end)
    end}},
  },
  ["lock:release"] = {
    outside = function(f, call) call(function() f(braid.lock()) end) end,
    badarg = {1, self_is(42)},
    also = {{"usage", "the lock is not held", function(f, call)
      call(function() f(braid.lock()) end)
    end}},
  },
  ["lock:with"] = {
    outside = function(f, call) call(function() f(braid.lock(), fn) end) end,
    nosuspend = function(f, call)
      local l = braid.lock()
      braid.spawn(l.acquire, l)
      braid.yield()
      call(function() f(l, fn) end)
    end,
    badarg = {2, function(f, call) call(function() f(braid.lock(), 42) end) end},
  },
  ["lock:locked"] = {badarg = {1, self_is(42)}},
  ["lock:owned"] = {
    outside = function(f, call) call(function() f(braid.lock()) end) end,
    badarg = {1, self_is(42)},
  },
  ["braid.condition"] = {
    badarg = {1, function(f, call) call(function() f(braid.semaphore(1)) end) end},
  },
  ["semaphore:count"] = {badarg = {1, self_is(42)}},
  ["event:wait"] = {
    outside = function(f, call) call(function() f(braid.event()) end) end,
    nosuspend = function(f, call) call(function() f(braid.event()) end) end,
    badarg = {1, self_is(42)},
  },
  ["event:set"] = {badarg = {1, self_is(42)}},
  ["event:is_set"] = {badarg = {1, self_is(42)}},

  -- files and names
  ["braid.fs.read_file"] = {
    outside = function(f, call) call(function() f("/dev/null") end) end,
    nosuspend = function(f, call) call(function() f("/dev/null") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["braid.fs.write_file"] = {
    outside = function(f, call) call(function() f("/nonexistent/x", "") end) end,
    nosuspend = function(f, call)
      call(function() f("/nonexistent/x", "") end)
    end,
    badarg = {2, function(f, call) call(function() f("/nonexistent/x") end) end},
  },
  ["braid.fs.append_file"] = {
    outside = function(f, call) call(function() f("/nonexistent/x", "") end) end,
    nosuspend = function(f, call)
      call(function() f("/nonexistent/x", "") end)
    end,
    badarg = {1, function(f, call) call(function() f(nil, "") end) end},
  },
  ["braid.fs.stat"] = {
    outside = function(f, call) call(function() f("/") end) end,
    nosuspend = function(f, call) call(function() f("/") end) end,
    badarg = {1, function(f, call) call(function() f({}) end) end},
  },
  ["braid.fs.list"] = {
    outside = function(f, call) call(function() f("/") end) end,
    nosuspend = function(f, call) call(function() f("/") end) end,
    badarg = {1, function(f, call) call(function() f(true) end) end},
  },
  ["braid.fs.mkdir"] = {
    outside = function(f, call) call(function() f("/nonexistent/d") end) end,
    nosuspend = function(f, call) call(function() f("/nonexistent/d") end) end,
    badarg = {2, function(f, call) call(function() f("/nonexistent/d", "rwx") end) end},
  },
  ["braid.fs.remove"] = {
    outside = function(f, call) call(function() f("/nonexistent/x") end) end,
    nosuspend = function(f, call) call(function() f("/nonexistent/x") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["braid.fs.rename"] = {
    outside = function(f, call)
      call(function() f("/nonexistent/x", "/nonexistent/y") end)
    end,
    nosuspend = function(f, call)
      call(function() f("/nonexistent/x", "/nonexistent/y") end)
    end,
    badarg = {2, function(f, call) call(function() f("/nonexistent/x") end) end},
  },
  ["braid.fs.chmod"] = {
    outside = function(f, call) call(function() f("/nonexistent/x", 420) end) end,
    nosuspend = function(f, call) call(function() f("/nonexistent/x", 420) end) end,
    badarg = {2, function(f, call) call(function() f("/nonexistent/x", "rw") end) end},
  },
  ["braid.fs.realpath"] = {
    outside = function(f, call) call(function() f("/") end) end,
    nosuspend = function(f, call) call(function() f("/") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["braid.fs.copy"] = {
    outside = function(f, call) call(function() f("/nonexistent/x", "/nonexistent/y") end) end,
    nosuspend = function(f, call)
      call(function() f("/nonexistent/x", "/nonexistent/y") end)
    end,
    badarg = {2, function(f, call) call(function() f("/nonexistent/x") end) end},
  },
  ["braid.fs.exists"] = {
    outside = function(f, call) call(function() f("/") end) end,
    nosuspend = function(f, call) call(function() f("/") end) end,
    badarg = {1, function(f, call) call(function() f({}) end) end},
  },
  ["braid.fs.walk"] = {
    outside = function(f, call) call(function() f("/") end) end,
    nosuspend = function(f, call) call(function() f("/") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["braid.fs.tmpdir"] = {
    outside = function(f, call) call(function() f() end) end,
    nosuspend = function(f, call) call(function() f() end) end,
    badarg = {1, function(f, call) call(function() f("a/b") end) end},
  },
  ["braid.fs.watch"] = {   -- never suspends
    outside = function(f, call) call(function() f("/tmp") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"debounce", function(f, call)
      call(function() f("/tmp", {debounce = NAN}) end)
    end},
  },
  ["watcher:next"] = {
    nosuspend = function(f, call)
      local w <close> = braid.fs.watch("/tmp")
      call(function() f(w) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["watcher:close"] = {badarg = {1, self_is(42)}},
  ["braid.fs.open"] = {
    outside = function(f, call) call(function() f("/dev/null") end) end,
    nosuspend = function(f, call) call(function() f("/dev/null") end) end,
    badarg = {2, function(f, call) call(function() f("/dev/null", "x") end) end},
    option = {"max_line", function(f, call)
      call(function() f("/dev/null", "r", {max_line = -1}) end)
    end},
  },
  ["braid.fs.lines"] = {
    outside = function(f, call) call(function() f("/dev/null") end) end,
    nosuspend = function(f, call) call(function() f("/dev/null") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["file:read"] = {
    nosuspend = function(f, call)
      local file <close> = braid.fs.open("/dev/null")
      call(function() f(file) end)
    end,
    badarg = {2, function(f, call)
      local file <close> = braid.fs.open("/dev/null")
      call(function() f(file, 0) end)
    end},
  },
  ["file:read_line"] = {
    nosuspend = function(f, call)
      local file <close> = braid.fs.open("/dev/null")
      call(function() f(file) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["file:lines"] = {badarg = {1, self_is(42)}},
  ["file:write"] = {
    nosuspend = function(f, call)
      local file <close> = braid.fs.open("/dev/null", "w")
      call(function() f(file, "x") end)
    end,
    badarg = {2, function(f, call)
      local file <close> = braid.fs.open("/dev/null", "w")
      call(function() f(file, {}) end)
    end},
  },
  ["file:seek"] = {
    badarg = {2, function(f, call)
      local file <close> = braid.fs.open("/dev/null")
      call(function() f(file, "middle") end)
    end},
  },
  ["file:close"] = {badarg = {1, self_is(42)}},
  ["braid.dns.resolve"] = {
    outside = function(f, call) call(function() f("localhost") end) end,
    nosuspend = function(f, call) call(function() f("localhost") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },

  -- signals: a waiter closes with the scope that made it, so it is never
  -- open outside a task
  ["braid.signal"] = {   -- never suspends
    outside = function(f, call) call(function() f("SIGUSR2") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["waiter:wait"] = {
    nosuspend = function(f, call)
      local w <close> = braid.signal("SIGUSR2")
      call(function() f(w) end)
    end,
    badarg = {1, self_is(42)},
    also = {{"closed", "the waiter is closed", function(f, call)
      local w = braid.signal("SIGUSR2")
      w:close()
      call(function() f(w) end)
    end}},
  },
  ["waiter:close"] = {badarg = {1, self_is(42)}},

  -- processes
  ["braid.exec"] = {
    outside = function(f, call) call(function() f({"true"}) end) end,
    nosuspend = function(f, call) call(function() f({"true"}) end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"kill_grace", function(f, call)
      call(function() f({"true"}, {kill_grace = NAN}) end)
    end},
  },
  ["braid.process"] = {   -- starts the child, never suspends
    outside = function(f, call) call(function() f({"true"}) end) end,
    badarg = {1, function(f, call) call(function() f("true") end) end},
    option = {"kill_grace", function(f, call)
      call(function() f({"true"}, {kill_grace = NAN}) end)
    end},
  },
  ["proc:read_line"] = {
    nosuspend = function(f, call)
      with_proc(function(p) call(function() f(p) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["proc:read"] = {
    nosuspend = function(f, call)
      with_proc(function(p) call(function() f(p) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["proc:lines"] = {badarg = {1, self_is(42)}},
  ["proc:write"] = {
    nosuspend = function(f, call)
      with_proc(function(p) call(function() f(p, "x\n") end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["proc:close_stdin"] = {badarg = {1, self_is(42)}},
  ["proc:wait"] = {
    nosuspend = function(f, call)
      with_proc(function(p) call(function() f(p) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["proc:kill"] = {badarg = {1, self_is(42)}},
  ["proc:close"] = {badarg = {1, self_is(42)}},

  -- workers (issue 20)
  ["braid.worker"] = {   -- starts the thread, never suspends
    outside = function(f, call) call(function() f("return {}") end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"max_message", function(f, call)
      call(function() f("return {}", {max_message = -1}) end)
    end},
  },
  ["worker:call"] = {
    nosuspend = function(f, call)
      with_worker(function(w) call(function() f(w, "f") end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["worker:close"] = {badarg = {1, self_is(42)}},
  ["braid.pool"] = {
    outside = function(f, call) call(function() f(1, "return {}") end) end,
    badarg = {1, function(f, call) call(function() f(0, "return {}") end) end},
  },
  ["braid.cpu_count"] = {none = "raises nothing"},

  -- network
  ["braid.tcp.connect"] = {
    outside = function(f, call) call(function() f("127.0.0.1", 1) end) end,
    nosuspend = function(f, call) call(function() f("127.0.0.1", 1) end) end,
    badarg = {2, function(f, call) call(function() f("127.0.0.1", "x") end) end},
    option = {"timeout", function(f, call)
      call(function() f("127.0.0.1", 1, {timeout = NAN}) end)
    end},
  },
  ["braid.tcp.listen"] = {   -- never suspends
    outside = function(f, call) call(function() f("127.0.0.1", 0, fn) end) end,
    badarg = {3, function(f, call) call(function() f("127.0.0.1", 0, 42) end) end},
    option = {"backlog", function(f, call)
      call(function() f("127.0.0.1", 0, fn, {backlog = -1}) end)
    end},
  },
  ["stream:read"] = {
    nosuspend = function(f, call)
      with_stream(function(c) call(function() f(c, 1) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["stream:read_line"] = {
    nosuspend = function(f, call)
      with_stream(function(c) call(function() f(c) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["stream:lines"] = {badarg = {1, self_is(42)}},
  ["stream:write"] = {
    nosuspend = function(f, call)
      with_stream(function(c) call(function() f(c, "x") end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["stream:shutdown"] = {
    nosuspend = function(f, call)
      with_stream(function(c) call(function() f(c) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["stream:close"] = {badarg = {1, self_is(42)}},
  ["braid.env"] = {none = "raises nothing"},
  ["proc:read_stderr"] = {
    nosuspend = function(f, call)
      local p <close> = braid.process({"cat"}, {stderr = "pipe"})
      call(function() f(p) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["proc:read_line_stderr"] = {
    nosuspend = function(f, call)
      local p <close> = braid.process({"cat"}, {stderr = "pipe"})
      call(function() f(p) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["stdin:read"] = {badarg = {1, self_is(42)}},
  ["stdin:read_line"] = {badarg = {1, self_is(42)}},
  ["stdin:lines"] = {badarg = {1, self_is(42)}},
  ["stdin:write"] = {badarg = {1, self_is(42)}},
  ["stdin:close"] = {badarg = {1, self_is(42)}},
  ["server:port"] = {badarg = {1, self_is(42)}},

  -- HTTP and JSON
  ["braid.http.request"] = {
    outside = function(f, call) call(function() f{url = NOWHERE} end) end,
    nosuspend = function(f, call) call(function() f{url = NOWHERE} end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"timeout", function(f, call)
      call(function() f{url = NOWHERE, timeout = NAN} end)
    end},
  },
  ["braid.http.open"] = {
    outside = function(f, call) call(function() f{url = NOWHERE} end) end,
    nosuspend = function(f, call) call(function() f{url = NOWHERE} end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"max_body", function(f, call)
      call(function() f{url = NOWHERE, max_body = -1} end)
    end},
  },
  ["braid.http.get"] = {
    outside = function(f, call) call(function() f(NOWHERE) end) end,
    nosuspend = function(f, call) call(function() f(NOWHERE) end) end,
    badarg = {1, function(f, call) call(function() f(42) end) end},
    option = {"connect_timeout", function(f, call)
      call(function() f(NOWHERE, {connect_timeout = NAN}) end)
    end},
  },
  ["braid.http.post"] = {
    outside = function(f, call) call(function() f(NOWHERE, "x") end) end,
    nosuspend = function(f, call) call(function() f(NOWHERE, "x") end) end,
    badarg = {3, function(f, call) call(function() f(NOWHERE, "x", 42) end) end},
    option = {"http_version", function(f, call)
      call(function() f(NOWHERE, "x", {http_version = "9"}) end)
    end},
  },
  ["res:read"] = {
    nosuspend = function(f, call)
      with_response(function(r) call(function() f(r) end) end)
    end,
    badarg = {1, self_is(42)},
  },
  ["res:lines"] = {badarg = {1, self_is(42)}},
  ["res:json"] = {badarg = {1, self_is(42)}},
  ["res:header_list"] = {badarg = {1, self_is(42)}},
  ["res:close"] = {badarg = {1, self_is(42)}},
  ["braid.json.encode"] = {none = "works outside tasks; what JSON cannot hold is kind json"},
  ["braid.json.decode"] = {
    badarg = {1, function(f, call) call(function() f(42) end) end},
  },
  ["server:close"] = {badarg = {1, self_is(42)}},
  ["server:path"] = {badarg = {1, self_is(42)}},
  ["braid.unix.connect"] = {   -- never suspends: a unix connect is at once
    outside = function(f, call) call(function() f("/nonexistent/s") end) end,
    badarg = {1, function(f, call) call(function() f("") end) end},
    option = {"max_line", function(f, call)
      call(function() f("/nonexistent/s", {max_line = -1}) end)
    end},
  },
  ["braid.unix.listen"] = {   -- never suspends
    outside = function(f, call) call(function() f("/nonexistent/s", fn) end) end,
    badarg = {2, function(f, call) call(function() f("/nonexistent/s", 42) end) end},
    option = {"backlog", function(f, call)
      call(function() f("@braid-names-spec", fn, {backlog = -1}) end)
    end},
  },
  ["braid.udp.bind"] = {   -- never suspends
    outside = function(f, call) call(function() f("127.0.0.1", 0) end) end,
    badarg = {2, function(f, call) call(function() f("127.0.0.1", "x") end) end},
  },
  ["braid.udp.open"] = {   -- never suspends
    outside = function(f, call) call(function() f() end) end,
  },
  ["sock:recv"] = {
    nosuspend = function(f, call)
      local s <close> = braid.udp.bind("127.0.0.1", 0)
      call(function() f(s) end)
    end,
    badarg = {1, self_is(42)},
    also = {{"closed", "the socket is closed", function(f, call)
      local s = braid.udp.open()
      s:close()
      call(function() f(s) end)
    end}},
  },
  ["sock:send"] = {   -- suspends only when the kernel's buffer is full
    badarg = {4, function(f, call)
      local s <close> = braid.udp.open()
      call(function() f(s, "x", "127.0.0.1", "y") end)
    end},
  },
  ["sock:address"] = {badarg = {1, self_is(42)}},
  ["sock:close"] = {badarg = {1, self_is(42)}},
}

-- ---- the specs ----

describe("names in messages", function()
  it("lists every public function and method with its expected messages", function()
    local missing, gone = {}, {}
    for name in pairs(discover()) do
      if EXPECT[name] == nil then missing[#missing + 1] = name end
    end
    for name in pairs(EXPECT) do
      if discover()[name] == nil then gone[#gone + 1] = name end
    end
    table.sort(missing)
    table.sort(gone)
    assert(#missing == 0, "public functions without an entry in EXPECT " ..
           "(spec/names_spec.lua): " .. table.concat(missing, ", "))
    assert(#gone == 0, "EXPECT lists what the module lacks: " ..
           table.concat(gone, ", "))
  end)

  it("has at least one message checked for each entry but those that raise none", function()
    for name, e in pairs(EXPECT) do
      assert(e.none or e.outside or e.nosuspend or e.badarg or e.option or
             e.also, name .. ": no case and no reason")
    end
  end)

  local found = discover()
  local names = {}
  for name in pairs(EXPECT) do names[#names + 1] = name end
  table.sort(names)

  -- Runs one case: inside a task (braid.run) or outside, as the
  -- situation says, then checks that call ran at least once.
  local function spec(name, sit, extra, case, kind, text, where)
    local f = found[name]
    local title = ("%s: %s"):format(name, text or sit)
    local inside = (text ~= nil or SITUATIONS[sit].task) and
                   where ~= "outside"
    it(title, function()
      assert(f, name .. " is not in the module")
      local call, calls = caller(name, sit, extra, kind, text)
      if inside then braid.run(function() case(f, call) end)
      else case(f, call) end
      assert(calls() > 0, name .. ": the case made no call")
    end)
  end

  for _, name in ipairs(names) do
    local e = EXPECT[name]
    if e.outside then spec(name, "outside", nil, e.outside) end
    if e.nosuspend then spec(name, "nosuspend", nil, e.nosuspend) end
    if e.badarg then spec(name, "badarg", e.badarg[1], e.badarg[2]) end
    if e.option then
      spec(name, "option", e.option[1], e.option[2], nil, nil, e.option[3])
    end
    for _, a in ipairs(e.also or {}) do
      spec(name, "badarg", nil, a[3], a[1], a[2])
    end
  end
end)
