-- spec/tostring_spec.lua (harden-h1): tostring of every kind of braid
-- object names its kind, live, after it is closed or ended, and after the
-- run that made it has ended, without raising or running script code.
local braid = require "braid"
local h = require "helper"

local URL, PID

setup(function() URL, PID = h.http_server("http") end)
teardown(function() if PID then os.execute("kill " .. PID) end end)

local X = "0x%x+"

-- {what, make() -> object, end(object) or nil, live pattern, [ended
-- pattern], [pattern once the run has ended]}
local function cases(dir)
  local srv   -- the TCP server the stream connects to
  return {
    {"task", function() return braid.spawn(braid.sleep, 0) end,
     function(t) t:await() end,
     '^<task %d+ ".-" pending>$', '^<task %d+ ".-" ok>$'},
    {"scope", function()
       local s
       braid.scope(function(sc) s = sc end)
       return s
     end, nil, "^braid%.Scope: " .. X .. "$"},
    {"channel", function() return braid.channel(1) end,
     function(c) c:close() end, "^braid%.Channel: " .. X .. "$"},
    {"shared channel", function() return braid.channel(1, {shared = true}) end,
     function(c) c:close() end, "^braid%.SharedChannel %(" .. X .. "%)$"},
    {"lock", braid.lock, nil, "^braid%.Lock: " .. X .. "$"},
    {"semaphore", function() return braid.semaphore(2) end, nil,
     "^braid%.Semaphore: " .. X .. "$"},
    {"event", braid.event, function(e) e:set() end, "^braid%.Event: " .. X .. "$"},
    {"condition", braid.condition, nil, "^braid%.Condition: " .. X .. "$"},
    {"ticker", function() return braid.ticker(1) end, function(t) t:close() end,
     "^<ticker every 1%.0 s>$", "^<ticker every 1%.0 s %(closed%)>$"},
    {"progress", function() return braid.progress(10, "tostring_spec") end,
     function(p) p:done() end, "^braid%.Progress: " .. X .. "$"},
    {"signal waiter", function() return braid.signal("SIGUSR1") end,
     function(s) s:close() end,
     "^<signal waiter SIGUSR1>$", "^<signal waiter %(closed%)>$"},
    {"tmpdir", function() return braid.fs.tmpdir() end, function(d) d:close() end,
     "^/.+/braid%-......$"},
    {"file", function() return braid.fs.open(dir .. "/f", "w") end,
     function(f) f:close() end, "^<file " .. X .. ">$", "^<file " .. X .. " closed>$"},
    {"watcher", function() return braid.fs.watch(dir) end, function(w) w:close() end,
     "^<watcher of .+>$", "^<watcher %(closed%)>$"},
    {"process", function() return braid.process({"sleep", "30"}) end,
     function(p) p:close() end, "^<process %d+ running>$", "^<process %d+ exited>$"},
    {"tcp server", function()
       return braid.tcp.listen("127.0.0.1", 0, function(s) s:close() end)
     end, function(s) s:close() end,
     "^<tcp server on port %d+>$", "^<tcp server closed>$"},
    {"tcp stream", function()
       srv = braid.tcp.listen("127.0.0.1", 0, function(s) s:close() end)
       return braid.tcp.connect("127.0.0.1", srv:port())
     end, function(s) s:close() srv:close() end,
     "^<tcp stream " .. X .. ">$", "^<tcp stream " .. X .. " closed>$"},
    {"unix server", function()
       return braid.unix.listen(dir .. "/sock", function(s) s:close() end)
     end, function(s) s:close() end,
     "^<unix server on .+/sock>$", "^<unix server closed>$"},
    {"udp socket", braid.udp.open, function(u) u:close() end,
     "^<udp socket " .. X .. ">$", "^<udp socket " .. X .. " closed>$"},
    {"standard stream", function() return braid.stderr end, nil,
     "^<braid%.stderr>$", "^<braid%.stderr>$", "^<braid%.stderr closed>$"},
    {"worker", function() return braid.worker("return {}") end,
     function(w) w:close() end,
     "^braid%.Worker %(running%)$", "^braid%.Worker %(closed%)$"},
    {"pool", function() return braid.pool(1, "return {}") end,
     function(p) p:close() end, "^braid%.Pool: " .. X .. "$"},
    {"http response", function() return braid.http.get(URL .. "/bytes/3") end,
     nil, "^<http response 200 http://.+/bytes/3>$"},
    {"error", function() return braid.Error.new{kind = "io", message = "gone"} end,
     nil, "^gone$"},
  }
end

describe("tostring", function()
  it("names every kind of braid object, live, ended, and after its run", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    finally(function() os.execute("rm -rf " .. dir) end)   -- failed or not
    local seen, kept = {}, {}
    local function check(what, v, pat, when)
      local ok, s = pcall(tostring, v)
      assert(ok, what .. " (" .. when .. "): " .. tostring(s))
      assert.is_string(s)
      assert(s:find(pat), what .. " (" .. when .. "): " .. s .. " !~ " .. pat)
    end
    braid.run(function()
      for _, c in ipairs(cases(dir)) do
        local what, make, stop, live = c[1], c[2], c[3], c[4]
        local ended = c[5] or live
        local v = make()
        check(what, v, live, "live")
        if stop then stop(v) end
        check(what, v, ended, "ended")
        kept[#kept + 1] = {what, v, c[6] or ended}
        seen[what] = true
      end
    end)
    -- after the run: what it made is closed, and says so
    for _, k in ipairs(kept) do check(k[1], k[2], k[3], "after the run") end
    assert.are.equal(24, #kept)
  end)

  -- Review "prims" 6: braid.Error.new takes any table, and a kind that is
  -- not a string (without a string message) made tostring raise "bad
  -- argument #-1 to '?'".
  it("names a braid.Error whatever its kind and message are", function()
    local cases = {
      {{kind = "io", message = "gone"}, "gone"},
      {{kind = "io", message = 3}, "3"},
      {{kind = "io"}, "braid error (io)"},
      {{kind = 5}, "braid error (5)"},
      {{}, "braid error (?)"},
      {{kind = {}, message = {}}, "braid error (table)"},
      {{kind = true}, "braid error (boolean)"},
      {{kind = print, message = false}, "braid error (function)"},
    }
    for _, c in ipairs(cases) do
      local e = braid.Error.new(c[1])
      assert.are.same({true, c[2]}, {pcall(tostring, e)})
    end
    -- the kind's own __tostring is not run
    local e = braid.Error.new{kind = setmetatable({}, {__tostring = error})}
    assert.are.same({true, "braid error (table)"}, {pcall(string.format, "%s", e)})
  end)
end)

describe("condition:notify", function()
  -- harden-h1: its error message ran the argument's __tostring
  it("names a bad count by its type, without running the script's __tostring", h.run(function()
    local c = braid.condition()
    c.lock:acquire()
    local ran = false
    local hostile = setmetatable({}, {__tostring = function() ran = true return "x" end})
    local ok, e = pcall(c.notify, c, hostile)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("non-negative integer expected, got table", e.message, 1, true)
    assert.is_false(ran)
    -- "2" counts as 2, as Lua's own integer arguments take it; "x" does not
    assert.is_true(pcall(c.notify, c, "2"))
    ok, e = pcall(c.notify, c, "x")
    assert.matches("got string", e.message, 1, true)
    ok, e = pcall(c.notify, c, 1.5)
    assert.matches("got 1.5", e.message, 1, true)
    c.lock:release()
  end))
end)
