-- spec/report_spec.lua: what braid prints about a failure (engine/core/
-- error.c): it runs no script code unbounded, names the failure's own
-- task and line, and leaves nothing out (nil errors, cancellations that
-- are a failure, braid.any's causes).
local braid = require "braid"
local h = require "helper"

-- run(src, code) -> stdout, stderr, path: runs `braid script` with src (a
-- string, or a list of lines) under `timeout 20` (a hang fails instead of
-- hanging the suite; SIGKILL 5 s later, for a script that takes SIGTERM
-- itself) and asserts that it exits with `code`.
local function run(src, code)
  if type(src) == "table" then src = table.concat(src, "\n") .. "\n" end
  local path = h.script(src)
  local out, err, got = h.sh((os.getenv("BRAID_RUN_ENV") or "") ..
    " timeout -k 5 20 " .. os.getenv("BRAID_BIN") .. " " .. path .. " </dev/null")
  os.remove(path)
  assert.are.equal(code, got, err)
  return out, err, path
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

describe("a report runs a script's __tostring bounded, also inside a task without a budget", function()
  it("an error with a looping __tostring raised by a scope body's <close> while cancelling: no spin, no abandon, the first error kept", function()
    local out, err = run({
      "local Weird = {__tostring = function() while true do end end}",
      "local t0 = os.time()",
      "local ok, err = pcall(braid.scope, function(s)",
      "  local conn <close> = setmetatable({}, {__close = function()",
      "    error(setmetatable({}, Weird))",
      "  end})",
      "  s:spawn(function() braid.sleep(0.01) error('the real failure', 0) end)",
      "  braid.sleep(10)",
      "end)",
      "print('caught:', err, os.time() - t0 < 3)",
    }, 0)
    assert.are.equal("caught:\tthe real failure\ttrue\n", out)
    assert.falsy(err:find("abandoned", 1, true), err)
    assert.truthy(err:find("error while cancelling: (table value whose __tostring failed)", 1, true), err)
  end)

  it("a cancel reason with a looping __tostring: the cancelled task is not abandoned", function()
    local out, err = run({
      "local R = setmetatable({}, {__tostring = function() while true do end end})",
      "local t = braid.spawn(function() braid.sleep(10) end)",
      "braid.yield()",
      "local t0 = os.time()",
      "t:cancel(R)",
      "local ok, e = pcall(braid.scope, function() t:await() end)",
      "print(ok, e.reason == R, e.message, os.time() - t0 < 3)",
    }, 0)
    assert.are.equal("false\ttrue\tcancelled ((table value whose __tostring failed))\ttrue\n", out)
    assert.are.equal("", err)
  end)

  it("a usage error naming a value with a looping __tostring (braid.select) returns", function()
    local out, err = run({
      "local ch = braid.channel(1)",
      "local op = setmetatable({}, {__tostring = function() while true do end end})",
      "print(pcall(braid.select, {{ch, op}}))",
    }, 0)
    assert.truthy(out:find("^false\t.*got %(table value whose __tostring failed%)"), out)
  end)

  it("at the REPL, an entry's error with a looping __tostring is reported and the session goes on", function()
    local transcript, ok = h.pty({
      {"expect", "> $"},
      {"send", "error(setmetatable({}, {__tostring=function() while true do end end}))\\r"},
      {"expect", "__tostring failed\\)", 5},
      {"expect", "> $", 5},
      {"send", "print('alive')\\r"},
      {"expect", "alive\\r\\n> $", 5},
      {"send", "\\x04"},
      {"exit", 10},
    }, "")
    assert.is_true(ok, transcript)
  end)
end)

-- A script's kill of braid itself ($PPID of popen's shell), made inside the
-- __tostring: the signal arrives while the bound runs. (os.execute would
-- not do: system() ignores SIGINT and SIGQUIT while its command runs.)
local function spin_after(sig)
  return "local sent = false\n" ..
    "local op = setmetatable({}, {__tostring = function()\n" ..
    "  if not sent then sent = true; io.popen('kill -" .. sig .. " $PPID'):close() end\n" ..
    "  while true do end\n" ..
    "end})\n" ..
    "local ch = braid.channel(1)\n" ..
    "local t0 = os.clock()\n" ..
    "local ok, e = pcall(braid.select, {{ch, op}})\n" ..
    "print(ok, e.message:match('got (%(.-%))%)$'), os.clock() - t0 < 3)\n" ..
    "io.stdout:flush()\n"
end

describe("the bound on a script's __tostring holds", function()
  it("through a signal that arrives while it runs and cancels nothing (SIGQUIT's dump, a SIGTERM the script watches)", function()
    local out, err = run(spin_after("QUIT"), 0)
    assert.are.equal("false\t(table value whose __tostring failed)\ttrue\n", out)
    assert.truthy(err:find("braid: 1 live task(s)", 1, true), err)
    out, err = run("local w <close> = braid.signal('SIGTERM')\n" ..
                   spin_after("TERM") .. "print(w:wait())\n", 0)
    assert.are.equal("false\t(table value whose __tostring failed)\ttrue\nSIGTERM\n", out)
  end)

  it("through Ctrl-C, which cancels the task: its cancellation is raised at the task's next instruction after the bound", function()
    local _, err = run(spin_after("INT") .. "while true do end\n", 130)
    assert.are.equal("braid: interrupted\n", err)   -- not abandoned: raised
  end)

  it("over a coroutine it resumes", function()
    local out, err = run({
      "local op = setmetatable({}, {__tostring = function()",
      "  coroutine.wrap(function() while true do end end)()",
      "end})",
      "local t0 = os.clock()",
      "local ok, e = pcall(braid.select, {{braid.channel(1), op}})",
      "print(ok, e.message:match('got (%(.-%))%)$'), os.clock() - t0 < 3)",
    }, 0)
    assert.are.equal("false\t(table value whose __tostring failed)\ttrue\n", out)
  end)
end)

describe("a failure's record travels with the failure, not with its value", function()
  it("a module's error table raised again in another task is reported with that task and its traceback", function()
    local _, err, path = run({
      "local NOT_FOUND = setmetatable({}, {__tostring = function() return 'not found' end})",
      "local function lookup(k) error(NOT_FOUND) end",                  -- 2
      "local function fetch(k) error(NOT_FOUND) end",                   -- 3
      "pcall(braid.gather, function() lookup('a') end)",                -- 4
      "braid.sleep(0.01)",
      "braid.gather(function() braid.sleep(0.01) fetch('b') end)",      -- 6
    }, 1)
    assert.truthy(err:find('^braid: not found\n  in task 3 "[^"]*:6", spawned at [^\n]*:6 '), err)
    assert.truthy(err:find(":3: in upvalue 'fetch'", 1, true), err)
    assert.falsy(err:find("lookup", 1, true), err)
  end)

  it("an equal string raised by the task that caught an earlier failure is its own failure", function()
    local _, err, path = run({
      "local function lookup(k) error('not found', 0) end",   -- 1
      "pcall(braid.gather, function() lookup('a') end)",      -- 2
      "local function check(k) error('not found', 0) end",    -- 3
      "check('b')",                                           -- 4
    }, 1)
    assert.truthy(err:find('^braid: not found\n  in task 1 "' .. plain(path) .. '"\nstack traceback:\n'), err)
    assert.truthy(err:find(":3: in local 'check'", 1, true), err)
    assert.falsy(err:find("task 2", 1, true), err)
  end)

  it("a scope body raising a table an earlier, caught member raised is reported as the body's", function()
    local _, err, path = run({
      "local B = setmetatable({}, {__tostring = function() return 'B' end})",
      "pcall(braid.gather, function() error(B) end)",          -- 2
      "braid.scope(function(s)",                               -- 3
      "  s:spawn(function() braid.sleep(0.01) error('first', 0) end)",
      "  pcall(braid.sleep, 1)",
      "  error(B)",                                            -- 6
      "end)",
    }, 1)
    local cancelling = err:match("braid: error while cancelling: B\n(.-)\nbraid: ")
    assert.truthy(cancelling, err)
    assert.truthy(cancelling:find('^  in task 1 "'), err)
    assert.truthy(cancelling:find(":6: in function <[^\n]*:3>"), err)
  end)

  it("keeps the first record through await, gather, pcall-and-rethrow of a table", function()
    local _, err = run({
      "local E = setmetatable({}, {__tostring = function() return 'E' end})",
      "local function deep() error(E) end",                                  -- 2
      "local t = braid.spawn(function() braid.sleep(0.01) deep() end)",      -- 3
      "local ok, e = pcall(braid.gather, function() return t:await() end)",  -- 4
      "assert(e == E)",
      "error(e)",                                                            -- 6
    }, 1)
    assert.truthy(err:find('^braid: E\n  in task 2 "[^"]*:3", spawned at [^\n]*:3\n'), err)
    assert.truthy(err:find(":2: in upvalue 'deep'", 1, true), err)
  end)

  -- braid.map is a wrapper in braid's Lua side: the error was handed to
  -- its frame, not to the script's that raises it again (pool:map: cli_spec)
  it("keeps a member's record through braid's Lua wrapper (pcall(braid.map) then error(e)), not through another", function()
    local _, err = run({
      "local function sq(x) braid.sleep(0.01 * x) error('no ' .. x, 0) end",  -- 1
      "local ok, e = pcall(braid.map, {1, 2}, sq)",                           -- 2
      "error(e, 0)",                                                          -- 3
    }, 1)
    assert.truthy(err:find('^braid: no 1\n  in task 2 "[^"]*:1", spawned at [^\n]*:2 '), err)
    assert.truthy(err:find(":1: in function <", 1, true), err)
    -- an equal string that another wrapper (pool:call) raises later is a
    -- failure of its own, not the caught member's
    _, err = run("local p <close> = braid.pool(1, 'return {f = function() error(\"down\", 0) end}')\n" ..
                 "local ok, e = pcall(braid.map, {1}, function() error('down', 0) end)\n" ..
                 "p:call('f')\n", 1)                                          -- 3
    assert.truthy(err:find('^braid: down\n  in task 1 "[^"]*"\nstack traceback:\n'), err)
    assert.truthy(err:find(":3: in main chunk", 1, true), err)
  end)
end)

describe("error(nil) reaching the top", function()
  it("is reported with its task, spawn place and traceback, as lua.c names it", function()
    local _, err = run({
      "braid.gather(function() braid.sleep(0.01) error(nil) end,",   -- 1
      "  function() braid.sleep(1) end)",
    }, 1)
    assert.truthy(err:find('^braid: %(error object is a nil value%)\n  in task 2 "[^"]*:1", spawned at [^\n]*:1 '), err)
    assert.truthy(err:find("stack traceback:\n\t[C]: in function 'error'\n", 1, true), err)
    _, err = run("braid.spawn(function() error() end)\n", 1)
    assert.truthy(err:find('^braid: %(error object is a nil value%)\n  in task 2 "[^"]*:1", spawned at [^\n]*:1\n'), err)
    _, err = run("local ok, e = pcall(braid.gather, function() error() end)\nerror(e)\n", 1)
    assert.truthy(err:find('^braid: %(error object is a nil value%)\n  in task 2 '), err)
  end)
end)

describe("a cancellation that is a task's failure, not its outcome", function()
  it("awaiting a task cancelled elsewhere: the report names the task and the await's line", function()
    local _, err, path = run({
      "local worker = braid.spawn(function() braid.sleep(10) end)",
      "braid.spawn(function() braid.sleep(0.01) worker:cancel('shutdown') end)",
      "local function collect()",
      "  return (worker:await())",                  -- 4
      "end",
      "collect()",                                  -- 6
    }, 1)
    assert.truthy(err:find('^braid: cancelled %(shutdown%)\n  in task 1 "' .. plain(path) .. '"\nstack traceback:\n'), err)
    assert.truthy(err:find(":4: in local 'collect'", 1, true), err)
  end)

  it("a gather member cancelled from outside (counted as failed): the report names the gather's line", function()
    local _, err = run({
      "local inner = braid.spawn(function() braid.sleep(10) end)",
      "braid.spawn(function() braid.sleep(0.01) inner:cancel('shutdown') end)",
      "braid.gather(function() braid.sleep(1) end, inner)",   -- 3
    }, 1)
    assert.truthy(err:find("^braid: cancelled %(shutdown%)\n  in task 1 "), err)
    assert.truthy(err:find(":3: in main chunk", 1, true), err)
  end)

  it("a cancellation error recorded as a failure gets no traceback field: tasks share it", function()
    local out, err = run({
      "local t = braid.spawn(function() braid.sleep(10) end)",
      "braid.yield()",
      "t:cancel('x')",
      "local ok, e = pcall(braid.scope, function() t:await() end)",
      "print(e.message, e.traceback)",
    }, 0)
    assert.are.equal("cancelled (x)\tnil\n", out)
  end)
end)

describe("braid.any with every member failed", function()
  it("prints each member's error with its task and traceback", function()
    local _, err = run({
      "local function fetch(url) braid.sleep(0.01) error('connection refused: ' .. url, 0) end",
      "local body = braid.any(function() fetch('http://a') end,",   -- 2
      "  function() fetch('http://b') end)",
    }, 1)
    assert.truthy(err:find("^braid: braid.any: all 2 failed\n  in task 1 "), err)
    assert.truthy(err:find('\n  member 1 of 2 failed: connection refused: http://a\n  in task 2 "[^"]*", spawned at [^\n]*:2 '), err)
    assert.truthy(err:find('\n  member 2 of 2 failed: connection refused: http://b\n  in task 3 '), err)
    assert.truthy(err:find(":1: in upvalue 'fetch'", 1, true), err)
  end)

  it("counts a member that raised nil, also the last one (errors.n)", function()
    local _, err = run({
      "braid.any(function() error('first', 0) end, function() error('second', 0) end,",
      "  function() error() end)",
    }, 1)
    assert.truthy(err:find("\n  member 2 of 3 failed: second\n", 1, true), err)
    assert.truthy(err:find("\n  member 3 of 3 failed: (error object is a nil value)\n", 1, true), err)
  end)

  it("lists at most 100 members, then says how many more", function()
    local _, err = run({
      "local fns = {}",
      "for i = 1, 150 do fns[i] = function() error('no ' .. i, 0) end end",
      "braid.any(table.unpack(fns))",
    }, 1)
    local n = 0
    for _ in err:gmatch("\n  member %d+ of 150 failed: ") do n = n + 1 end
    assert.are.equal(100, n, err)
    assert.truthy(err:find("member 100 of 150 failed: no 100\n", 1, true), err)
    assert.truthy(err:find("\n  ... and 50 more members failed", 1, true), err)
  end)
end)

describe("minor points of reports and messages", function()
  it("the 'also raised while cancelling' list says how many more there were past 100", function()
    local _, err = run({
      "local fns = {}",
      "for i = 1, 150 do",
      "  fns[i] = function()",
      "    local c <close> = setmetatable({}, {__close = function() error('close ' .. i, 0) end})",
      "    braid.sleep(10)",
      "  end",
      "end",
      "fns[151] = function() braid.sleep(0.01) error('first', 0) end",
      "braid.gather(table.unpack(fns))",
    }, 1)
    assert.truthy(err:find("\n  ... and 50 more raised while cancelling\n", 1, true), err)
  end)

  it("a group's timeout names the function, the timeout (as braid.timeout's does) and how many members it cut off", h.virtual(function()
    local ok, e = pcall(braid.gather, function() end, function() braid.sleep(1) end, {timeout = 0.05})
    assert.is_true(braid.is_timeout(e))
    assert.are.equal("braid.gather timed out after 0.05 s (1 of 2 unfinished)", e.message)
    ok, e = pcall(braid.race, function() braid.sleep(5) end, {timeout = 2})
    assert.are.equal("braid.race timed out after 2 s (1 of 1 unfinished)", e.message)
    ok, e = pcall(braid.any, function() error("x") end, function() braid.sleep(5) end,
                  function() braid.sleep(5) end, {timeout = 2, limit = 2})
    assert.are.equal("braid.any timed out after 2 s (2 of 3 unfinished)", e.message)
    local r = braid.map({1, 2, 3}, braid.sleep, {timeout = 1.5, settle = true})
    assert.are.equal("braid.map timed out after 1.5 s (2 of 3 unfinished)", r[2].error.message)
    ok, e = pcall(braid.map, {1, 2, 3}, braid.sleep, {timeout = 1.5, limit = 1})
    assert.are.equal("braid.map timed out after 1.5 s (2 of 3 unfinished)", e.message)
  end))

  it("t:cancel() without a reason: the message is 'cancelled' and there is no reason (docs/API.md)", h.virtual(function()
    for _, args in ipairs({{}, {nil}}) do
      local t = braid.spawn(braid.sleep, 1)
      braid.yield()
      t:cancel(table.unpack(args, 1, select("#", table.unpack(args))))
      local _, e = pcall(t.await, t)
      assert.are.equal("cancelled", e.message)
      assert.is_nil(e.reason)
    end
  end))
end)
