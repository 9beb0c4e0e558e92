-- spec/misuse_spec.lua (issue 19): misuse that explains itself: a list
-- given to gather, misspelt names of braid and of its objects' methods,
-- reports that name where tasks came from instead of "?", no empty
-- traceback under a deadlock, REPL errors without the REPL's own frames.
local braid = require "braid"
local h = require "helper"

local BIN = assert(os.getenv("BRAID_BIN"), "BRAID_BIN is not set (run spec/run)")
local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- run_script(src) -> stdout, stderr, code of `braid script`, bounded.
local function run_script(src)
  local p = h.script(src)
  local o, e, c = h.sh(RUN_ENV .. " timeout 20 " .. q(BIN) .. " " .. q(p) ..
                       " </dev/null")
  os.remove(p)
  os.remove((p:gsub("%.lua$", "")))
  return o, e, c, p
end

local function usage_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok)
  assert.is_true(braid.is_error(e), tostring(e))
  assert.are.equal("usage", e.kind)
  return e.message
end

describe("braid.gather given a list", function()
  it("says gather takes functions as arguments and shows how",
     h.run(function()
    local m = usage_of(braid.gather, {function() end, function() end})
    assert.matches("braid.gather takes functions as arguments, not a list",
                   m, 1, true)
    assert.matches("braid.gather(table.unpack(list))", m, 1, true)
    assert.matches("braid.map(list", m, 1, true)
    m = usage_of(braid.race, {function() end})
    assert.matches("braid.race(table.unpack(list))", m, 1, true)
    -- a real options table is still an options table
    assert.matches("unknown option 'settl'",
                   usage_of(braid.gather, function() end, {settl = true}),
                   1, true)
  end))
end)

describe("a misspelt braid name", function()
  it("raises naming the field and the nearest name", function()
    local m = usage_of(function() return braid.sleap end)
    assert.matches("braid has no field 'sleap' (did you mean 'sleep'?)", m,
                   1, true)
    assert.matches("braid.fs has no field 'reed_file' (did you mean "
                   .. "'read_file'?)",
                   usage_of(function() return braid.fs.reed_file end), 1, true)
    m = usage_of(function() return braid.frobnicate end)
    assert.matches("braid has no field 'frobnicate'$", m)
  end)

  it("points at the script's line", function()
    local m = usage_of(function() return braid.spwan end)
    assert.matches("misuse_spec.lua:%d+: braid has no field 'spwan' %(did "
                   .. "you mean 'spawn'%?%)", m)
  end)

  it("leaves private names and other keys nil", function()
    assert.is_nil(braid._no_such_thing)
    assert.is_nil(braid[1])
    assert.is_function(braid.sleep)
  end)

  it("raises for a misspelt method of braid's objects", h.run(function()
    local ch = braid.channel(1)
    assert.matches("braid.Channel has no method 'sned' (did you mean "
                   .. "'send'?)", usage_of(function() ch:sned(1) end), 1, true)
    local l = braid.lock()
    assert.matches("braid.Lock has no method 'aquire' (did you mean "
                   .. "'acquire'?)", usage_of(function() l:aquire() end),
                   1, true)
    local c = braid.condition()
    assert.matches("braid.Condition has no method 'wiat'",
                   usage_of(function() c:wiat() end), 1, true)
    -- fields of objects that have them read as before
    assert.is_number(braid.current().id)
  end))

  it("raises for a misspelt field or method of a task or a process",
     h.run(function()
    local t = braid.spawn(function() end)
    assert.matches("braid.Task has no field or method 'nmae' (did you mean "
                   .. "'name'?)", usage_of(function() return t.nmae end),
                   1, true)
    assert.matches("braid.Task has no field or method 'awiat' (did you "
                   .. "mean 'await'?)", usage_of(function() t:awiat() end),
                   1, true)
    local p <close> = braid.process({"true"})
    assert.matches("braid.Process has no field or method 'kil' (did you "
                   .. "mean 'kill'?)", usage_of(function() p:kil() end),
                   1, true)
    assert.matches("braid.Process has no field or method 'pdi' (did you "
                   .. "mean 'pid'?)", usage_of(function() return p.pdi end),
                   1, true)
    -- found names, private names and other keys read as before
    assert.is_number(t.id)
    assert.is_string(t.name)
    assert.equal(braid.current(), t.parent)
    assert.is_number(p.pid)
    assert.is_nil(t._private)
    assert.is_nil(t[1])
    assert.is_nil(p._private)
    assert.is_nil(p[1])
    p:wait()
  end))
end)

describe("reports", function()
  it("name where a server's handler was spawned: the listen call",
     function()
    local _, err = run_script([[
local srv = braid.tcp.listen("127.0.0.1", 0, function() error("boom", 0) end)
local c = braid.tcp.connect("127.0.0.1", srv:port())
braid.sleep(5)
]])
    assert.matches("boom", err, 1, true)
    assert.not_matches("spawned at ?", err, 1, true)
    assert.matches("spawned at [^\n]+%.lua:1\n", err)
  end)

  it("of a deadlock list the main task without '?' and no empty traceback",
     function()
    local _, err, code, path = run_script([[
local ch = braid.channel()
braid.spawn(function() ch:recv() end)
ch:recv()
]])
    assert.are.equal(1, code)
    assert.matches("deadlock", err, 1, true)
    assert.matches("task 1 (" .. path .. ") waits on channel recv", err, 1, true)
    assert.not_matches("?", err, 1, true)
    assert.not_matches("stack traceback:", err, 1, true)
  end)
end)

describe("usage errors raised through braid's Lua side", function()
  it("name the script's line, not braid's own", function()
    local o, e = run_script([[
local ok, err = pcall(function()
  braid.fs.mkdir("/tmp/x", {bogus = 1})
end)
print(err.message)
ok, err = pcall(function()
  braid.http.get("http://127.0.0.1:1/", {timeout = 0/0})
end)
print(err.message)
]])
    local lines = {}
    for l in o:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("^[^\n]*%.lua:2: bad argument #2 to 'braid.fs.mkdir' %(unknown option 'bogus'%)", lines[1] or e)
    assert.matches("^[^\n]*%.lua:6: bad option 'timeout' to 'braid.http.get'", lines[2] or e)
    assert.not_matches("%[braid%]", o)
  end)
end)

describe("braid.stdin's line limit", function()
  -- it named "the max_line option of braid.stdin", which does not exist
  it("points to read(n), not to an option braid.stdin does not have", function()
    local p = h.script([[
      print(select(2, pcall(braid.stdin.read_line, braid.stdin)).message)
      print(#braid.stdin:read("a"))
    ]])
    local o, e = h.sh(RUN_ENV .. " head -c 2000000 /dev/zero | tr '\\0' x | timeout 60 " ..
                      q(BIN) .. " " .. q(p))
    os.remove(p)
    assert(o:match("^stdin:read_line: line longer than 1048576 bytes %(the bytes stay: read%(n%) takes them%)\n"), o .. e)
    assert.is_nil(o:find("option", 1, true), o)
    assert(o:match("\n2000000\n$"), o .. e)
  end)
end)

describe("braid.http's body_file", function()
  -- a directory opened, and its read failed inside libcurl: kind "http",
  -- "operation aborted by callback"
  it("raises kind io, EISDIR, for a directory, before any request", h.run(function()
    local dir = h.tmp()
    assert(os.execute("mkdir " .. q(dir)))
    local ok, e = pcall(braid.http.request, {url = "http://127.0.0.1:1/", method = "PUT",
                                             body_file = dir})
    os.remove(dir)
    assert.is_false(ok)
    assert.are.equal("io", e.kind, tostring(e))
    assert.are.equal("EISDIR", e.code)
    assert.matches("braid.http.request: cannot open body_file '" .. dir .. "'", e.message, 1, true)
  end))
end)

describe("braid.http's headers and body numbers", function()
  -- NaN went out as the header value "nan"/"-nan", infinity as "inf"; and
  -- a non-table headers beside a table body was dropped, not refused
  it("refuses numbers that are not finite and headers that are no table", h.run(function()
    local function bad(opts)
      opts.url = "http://127.0.0.1:1/"
      local ok, e = pcall(braid.http.request, opts)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind, tostring(e))
      return e.message
    end
    local msg = "bad option '%s' to 'braid.http.request' (a number that is not finite)"
    assert.are.equal(msg:format("headers"), bad{headers = {["X-N"] = 0/0}})
    assert.are.equal(msg:format("headers"), bad{headers = {["X-N"] = {1, math.huge}}})
    local sent = false
    assert.are.equal(msg:format("body"), bad{body = function()
      if not sent then sent = true return -math.huge end
    end})
    assert.matches("bad option 'headers' to 'braid.http.request' (table expected)",
                   bad{headers = "x", body = {a = 1}}, 1, true)
  end))
end)

describe("braid.http's query option", function()
  -- a nested table was dropped and a function sent as "function: 0x..."
  it("refuses names and values it cannot send, naming them", h.run(function()
    local function bad(query)
      local ok, e = pcall(braid.http.get, "http://127.0.0.1:1/", {query = query})
      assert.is_false(ok)
      assert.are.equal("usage", e.kind, tostring(e))
      return e.message
    end
    assert.matches("(a is a table that is not a list;", bad{a = {b = {c = 1}}}, 1, true)
    assert.matches("(a is a table that is not a list;", bad{a = {1, 2, [5] = 3}}, 1, true)
    assert.matches("(e is a function;", bad{e = print}, 1, true)
    assert.matches("(a[2] is a table;", bad{a = {1, {}}}, 1, true)
    assert.matches("(a name is a table;", bad{[{}] = 1}, 1, true)
    assert.matches("(a is a number that is not finite;", bad{a = 0/0}, 1, true)
    assert.matches("(a[2] is a number that is not finite;", bad{a = {1, -math.huge}}, 1, true)
    local function url(query)
      local _, e = pcall(braid.http.get, "http://127.0.0.1:1/", {query = query})
      return e.url
    end
    -- raw: a list's __index is not run (it looped here), a name given as
    -- a number and as a string is sent twice, numbers in full
    assert.are.equal("http://127.0.0.1:1/",
                     url{k = setmetatable({}, {__index = function() return "x" end})})
    assert.are.equal("http://127.0.0.1:1/?1=a&1=b", (url{[1] = "a", ["1"] = "b"}:gsub("1=b&1=a", "1=a&1=b")))
    assert.are.equal("http://127.0.0.1:1/?a=1152921504606846976&b=1.152921504606847e%2B18&c=0.1&d=3,1",
                     (url{a = 1 << 60, b = 2.0^60, c = 0.1, d = {3, 1}}:gsub("d=3&d=1", "d=3,1")))
    -- what it can send still goes: the request then fails to connect
    local ok, e = pcall(braid.http.get, "http://127.0.0.1:1/",
                        {query = {a = {1, "x", true}, b = 2.5, c = false, d = {}}})
    assert.is_false(ok)
    assert.are.equal("http", e.kind, tostring(e))
    assert.are.equal("http://127.0.0.1:1/?a=1&a=x&a=true&b=2.5&c=false", e.url)
  end))
end)

describe("SIGQUIT (Ctrl-\\)", function()
  -- the dump came from the loop only: a script that never suspends
  -- printed nothing
  it("prints the task tree of a script that never suspends, each time", function()
    local p = h.script([[
      local t = braid.spawn(function() braid.sleep(100) end)
      t.name = "sleeper"
      print("ready") io.stdout:flush()
      while true do end
    ]])
    local out, err = h.tmp(), h.tmp()
    local _, sherr, code = h.sh(table.concat({
      -- braid itself in the background, not under timeout(1), which
      -- would take the signals; a guard kills it instead
      RUN_ENV .. " " .. q(BIN) .. " " .. q(p) .. " >" .. out .. " 2>" .. err .. " &",
      "pid=$!",
      "(sleep 30; kill -KILL $pid) 2>/dev/null & guard=$!",
      "for _ in $(seq 1 600); do grep -q ready " .. out .. " && break; sleep 0.05; done",
      -- each signal once the one before was handled: two pending SIGQUITs
      -- would merge into one
      "kill -QUIT $pid",
      "for _ in $(seq 1 600); do grep -q 'live task' " .. err .. " && break; sleep 0.05; done",
      "sleep 0.2; kill -QUIT $pid",
      "for _ in $(seq 1 600); do [ $(grep -c 'live task' " .. err .. ") -ge 2 ] && break; sleep 0.05; done",
      "kill -INT $pid",
      "wait $pid; code=$?; kill $guard 2>/dev/null; exit $code"}, "\n"))
    local e = h.slurp(err) or ""
    os.remove(p) os.remove(out) os.remove(err)
    assert.are.equal(130, code, e .. sherr)
    local n = 0
    for _ in e:gmatch("braid: 2 live task%(s%)\ntask 1 [^\n]* running\n  task 2 \"sleeper\"") do n = n + 1 end
    assert.are.equal(2, n, e)
  end)
end)

-- move_on refused "0.5" and callable tables, which braid.timeout takes;
-- braid.scope and braid.shield refused callable tables too; a ticker too
-- long read "must be a positive number"; select named a shared channel
-- "userdata"
describe("arguments taken alike", function()
  it("move_on, scope and shield take what timeout and spawn take", h.run(function()
    local double = setmetatable({}, {__call = function(_, x) return x * 2 end})
    assert.are.same({true, 42}, {braid.move_on("0.5", double, 21)})
    assert.are.equal(8, braid.shield(double, 4))
    assert.are.equal("scoped", braid.scope(setmetatable({}, {__call = function() return "scoped" end})))
    local ok, e = pcall(braid.move_on, "x", print)
    assert.are.equal("usage", e.kind)
    assert.matches("braid.move_on", e.message)
    ok, e = pcall(braid.move_on, 1, 5)
    assert.matches("bad argument #2 to 'braid.move_on' %(function expected, got number%)", e.message)
  end))

  it("says what is wrong with a ticker's period and a select case", h.run(function()
    local ok, e = pcall(braid.ticker, 1e10)
    assert.matches("period too long", e.message)
    ok, e = pcall(braid.select, {{braid.channel(1, {shared = true}), "recv"}})
    assert.matches("braid.Channel expected, got braid.SharedChannel", e.message)
  end))
end)
