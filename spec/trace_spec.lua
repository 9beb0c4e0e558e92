-- trace_spec.lua: the execution trace (braid.run's `trace` option, the
-- runner's --trace): Chrome trace-event JSON checked structurally by
-- spec/trace_check.lua for a fail-fast gather, a timeout, nested scopes,
-- processes, TCP and HTTP, and what each records.
local braid = require "braid"
local h = require "helper"
local check = require "trace_check"

local BIN = assert(os.getenv("BRAID_BIN"), "BRAID_BIN is not set (run spec/run)")
local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

local function tmpfile()
  local p = os.tmpname()
  return p
end

-- traced(fn, [clock]) -> index of the checked trace of braid.run(fn), and
-- whatever braid.run raised (or nil).
local function traced(fn, clock)
  local path = tmpfile()
  local ok, err = pcall(braid.run, fn, {trace = path, clock = clock or "virtual"})
  local ix = check.check(check.load(path))
  os.remove(path)
  return ix, (not ok) and err or nil
end

describe("braid.run's trace", function()
  it("records a fail-fast gather: the failure, the cancel, its flows", function()
    local ix, err = traced(function()
      local ok, e = pcall(braid.gather,
        function() braid.sleep(0.2); error("boom") end,
        function() braid.sleep(5) end,
        function() braid.sleep(5) end)
      assert(not ok and tostring(e):match("boom"))
    end)
    assert.is_nil(err)
    local main = check.named(ix, "^main #")
    assert.truthy(main)
    -- the root waits in the gather, labelled
    local g = check.slices(ix, "^braid.gather of 3$", main)
    assert.equal(1, #g)
    assert.near(200000, g[1].dur, 1)   -- microseconds, virtual
    local fail = check.instants(ix, "failure")
    assert.equal(1, #fail)
    assert.truthy(fail[1].args.message:match("boom"))
    local cancels = check.instants(ix, "cancel", fail[1].tid)
    assert.equal(1, #cancels)
    assert.equal("failure", cancels[1].args.by)
    -- both siblings were reached, each by a flow from the failed task
    local reached = check.instants(ix, "cancelled")
    assert.equal(2, #reached)
    local n = 0
    for _, fl in pairs(ix.flows) do
      if fl.s.name == "cancel" then
        n = n + 1
        assert.equal(fail[1].tid, fl.s.tid)
        assert.equal("sleep 5", check.slices(ix, "^sleep", fl.f.tid)[1].name)
      end
    end
    assert.equal(2, n)
    -- every spawn has a flow to the child's first run
    for _, sp in ipairs(check.instants(ix, "spawn")) do
      local fl = ix.flows[2 * sp.args.task]
      assert.truthy(fl, "spawn flow of task " .. sp.args.task)
      assert.equal(sp.args.task, fl.f.tid)
    end
  end)

  it("records a timeout: the instant, the cancel by the deadline", function()
    local ix = traced(function()
      assert(not pcall(braid.timeout, 0.5, function()
        braid.scope(function(s)
          s:spawn(function() braid.sleep(10) end)
          braid.sleep(10)
        end)
      end))
    end)
    local main = check.named(ix, "^main #")
    local to = check.instants(ix, "timeout", main)
    assert.equal(1, #to)
    assert.equal(500, to[1].args.after_ms)
    assert.equal(500000, to[1].ts)
    local c = check.instants(ix, "cancel", main)
    assert.equal("timeout", c[1].args.by)
    -- the child in the nested scope was reached; its sleep ended by cancel
    local child = check.instants(ix, "cancelled")
    assert.equal(1, #child)
    local woke
    for _, s in ipairs(check.slices(ix, "^sleep 10$", child[1].tid)) do
      woke = s.args and s.args.woke
    end
    assert.equal("cancel", woke)
  end)

  it("records nested scopes: parents' tracks before children's", function()
    local ix = traced(function()
      braid.scope(function(s)
        local a = s:spawn(function()
          braid.scope(function(s2)
            local b = s2:spawn(function() braid.sleep(1) end)
            b.name = "grandchild"
          end)
        end)
        a.name = "child"
        local c = braid.spawn(function() braid.sleep(0.5) end)
        c:await()
      end)
    end)
    local main, child = check.named(ix, "^main #"), check.named(ix, "^child #")
    local gc = check.named(ix, "^grandchild #")
    assert.equal(main, ix.tracks[child].parent)
    assert.equal(child, ix.tracks[gc].parent)
    assert.truthy(ix.tracks[main].sort < ix.tracks[child].sort)
    assert.truthy(ix.tracks[child].sort < ix.tracks[gc].sort)
    assert.truthy(#check.slices(ix, "^await task %d+$", main) == 1)
    assert.truthy(#check.slices(ix, "^its members$", child) >= 1)
  end)

  it("names each track after its own function's place, though a collected function's address is reused", function()
    local first, second
    local ix = traced(function()
      first = debug.getinfo(1, "l").currentline + 3
      second = first + 2
      for _ = 1, 100 do
        braid.spawn(function() end):await()
        collectgarbage()   -- frees the closure: the next one may take its place
        braid.spawn(function() end):await()
        collectgarbage()
      end
    end)
    local at, tids = {}, {}
    for tid, tr in pairs(ix.tracks) do
      local line = tonumber(tr.name:match(":(%d+) #"))
      if line and not tr.name:match("^main") then
        at[tid] = line
        tids[#tids + 1] = tid
      end
    end
    table.sort(tids)   -- ids grow: the two places alternate
    assert.equal(200, #tids)
    for i, tid in ipairs(tids) do
      assert.equal(i % 2 == 1 and first or second, at[tid])
    end
  end)

  it("labels process waits with the command line", function()
    local ix = traced(function()
      braid.exec({"sh", "-c", "exit 0"})
      local ok = pcall(braid.exec, {"sh", "-c", "exit 3"}, {check = true})
      assert(not ok)
    end, "real")
    local main = check.named(ix, "^main #")
    local ex = check.slices(ix, "^exec sh %-c exit", main)
    assert.equal(2, #ex)
    assert.equal("exec sh -c exit 0", ex[1].name)
  end)

  it("labels name lookups, file requests and process exits", function()
    local path = os.tmpname()
    local ix = traced(function()
      braid.dns.resolve("localhost")
      braid.fs.write_file(path, "x")
      local p = braid.process({"true"})
      p:wait()
    end, "real")
    os.remove(path)
    local main = check.named(ix, "^main #")
    assert.equal(1, #check.slices(ix, "^dns localhost$", main))
    assert.equal(1, #check.slices(ix, "^fs%.write_file " .. path:gsub("%p", "%%%0") .. "$", main))
    assert.equal(1, #check.slices(ix, "^process %d+ exit$", main))
  end)

  it("labels TCP waits with the peer and the direction", function()
    local ix = traced(function()
      local srv = braid.tcp.listen("127.0.0.1", 0, function(s)
        local line = s:read_line()
        s:write(line .. "\n")
        s:close()
      end)
      local c <close> = braid.tcp.connect("127.0.0.1", srv:port())
      c:write("hello\n")
      assert(c:read_line() == "hello")
      srv:close()
    end, "real")
    local main = check.named(ix, "^main #")
    assert.equal(1, #check.slices(ix, "^tcp connect 127.0.0.1:%d+$", main))
    assert.truthy(#check.slices(ix, "^tcp 127.0.0.1:%d+ read$", main) >= 1)
    -- the handler reads from the client's side of the connection
    assert.truthy(#check.slices(ix, "^tcp 127.0.0.1:%d+ read$") >= 2)
    for _, c in pairs(ix.tracks) do
      assert.truthy(c.events)
    end
  end)

  it("labels HTTP waits with the method and the URL", function()
    local url, pid = h.http_server("http")
    local ok, ix = pcall(traced, function()
      assert(braid.http.request({url = url .. "/bytes/10"}).body == ("x"):rep(10))
      assert(braid.http.request({url = url .. "/echo", method = "PUT",
                                 body = "hi"}).status == 200)
      -- chunks 0.25 s apart: reading them waits (at least for the last)
      local res <close> = braid.http.open({url = url .. "/chunked?n=4&delay=0.25"})
      local got = {}
      for piece in function() return res:read() end do got[#got + 1] = piece end
      assert(table.concat(got) == "line 0\nline 1\nline 2\nline 3\n")
    end, "real")
    os.execute("kill " .. pid)
    assert(ok, ix)
    local main = check.named(ix, "^main #")
    local u = url:gsub("%p", "%%%0")
    assert.equal(1, #check.slices(ix, "^http GET " .. u .. "/bytes/10$", main))
    assert.equal(1, #check.slices(ix, "^http PUT " .. u .. "/echo$", main))
    local c = u .. "/chunked%?n=4&delay=0%.25"
    assert.equal(1, #check.slices(ix, "^http GET " .. c .. "$", main))
    assert.truthy(#check.slices(ix, "^http read " .. c .. "$", main) >= 1)
  end)

  it("labels a condition wait as such", function()
    local ix, err = traced(function()
      local c = braid.condition()
      local t = braid.spawn(function() c.lock:with(c.wait, c) end)
      braid.sleep(1)
      c.lock:with(c.notify, c)
      t:await()
    end)
    assert.is_nil(err)
    local w = check.slices(ix, "^condition wait$")
    assert.equal(1, #w)
    assert.near(1000000, w[1].dur, 1)
    assert.equal(0, #check.slices(ix, "^event wait$"))
  end)

  it("refuses a bad trace option and an unwritable file", function()
    local ok, e = pcall(braid.run, function() end, {trace = 42})
    assert.falsy(ok)
    assert.equal("usage", e.kind)
    ok, e = pcall(braid.run, function() end, {trace = "/nonexistent/dir/t.json"})
    assert.falsy(ok)
    assert.equal("io", e.kind)
    assert.truthy(tostring(e):match("trace"))
  end)
end)

describe("braid --trace", function()
  local function run(args)
    return h.sh(RUN_ENV .. " timeout 20 '" .. BIN .. "' " .. args .. " </dev/null")
  end

  it("writes the trace when the script fails", function()
    local path = tmpfile()
    local _, err, code = run("--virtual-time --trace " .. path ..
      " -e 'braid.spawn(function() braid.sleep(1) end) braid.sleep(0.5) error(\"late\")'")
    assert.equal(1, code)
    assert.truthy(err:match("late"))
    local ix = check.check(check.load(path))
    os.remove(path)
    assert.equal(1, #check.instants(ix, "failure"))
    assert.equal(1, #check.instants(ix, "cancelled"))
  end)

  -- Runs `braid ARGS -e BODY` (BODY prints a line once it runs) and, once
  -- that line is out, the shell commands KILLS ($p is braid); returns the
  -- exit status. Signals sent at a fixed delay (`timeout -s INT 1`) could
  -- come before braid had set its handlers up.
  local function signalled(args, body, kills)
    local out = tmpfile()
    local _, _, code = h.sh(RUN_ENV .. " timeout -k 5 30 sh -c '\"$0\" " .. args ..
      " -e \"" .. body .. "\" >" .. out .. " </dev/null & p=$!; i=0;" ..
      " while [ ! -s " .. out .. " ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; " ..
      kills .. "; wait $p' '" .. BIN .. "'")
    os.remove(out)
    return code
  end

  it("writes the trace when interrupted (SIGINT)", function()
    local path = tmpfile()
    local code = signalled("--trace " .. path, "print(1) io.stdout:flush() braid.sleep(30)",
                           "kill -INT $p")
    assert.equal(130, code)
    local ix = check.check(check.load(path))
    os.remove(path)
    local c = check.instants(ix, "cancel")
    assert.equal("interrupt", c[1].args.by)
  end)

  it("writes the trace when a second SIGINT leaves at once", function()
    local path = tmpfile()
    -- the shielded body outlasts the first SIGINT (grace 30 s); the second
    -- one makes braid _exit
    local code = signalled("--grace 30 --trace " .. path,
      "braid.shield(function() print(1) io.stdout:flush() braid.sleep(30) end)",
      "kill -INT $p; sleep 1; kill -INT $p")
    assert.equal(130, code)
    local doc = check.load(path)   -- complete JSON; slices are left open
    os.remove(path)
    local by
    for _, e in ipairs(doc.traceEvents) do
      if e.ph == "i" and e.name == "cancel" then by = e.args.by end
    end
    assert.equal("interrupt", by)
  end)

  it("writes the trace when the script calls os.exit", function()
    local path = tmpfile()
    local _, _, code = run("--trace " .. path ..
      " -e 'braid.spawn(function() braid.sleep(0.01) end) os.exit(3)'")
    assert.equal(3, code)
    local doc = check.load(path)   -- complete JSON; tracks may be unnamed
    os.remove(path)
    assert.truthy(#doc.traceEvents > 0)
  end)
end)

describe("braid trace FILE", function()
  local function sh(cmd) return h.sh(RUN_ENV .. " timeout 60 " .. cmd .. " </dev/null") end

  -- a (sleeps 1, then spawns b, which sleeps 2, and awaits it) against c
  -- (sleeps 2.5), in one gather: a -> b decides the time, 3 s; then d,
  -- awaited under a 0.2 s timeout and cancelled by main.
  local WORKFLOW = [[
braid.gather(function()
  braid.current().name = "a"
  braid.sleep(1)
  local b = braid.spawn(function() braid.sleep(2) end)
  b.name = "b"
  b:await()
end, function()
  braid.current().name = "c"
  braid.sleep(2.5)
end)
local d = braid.spawn(function() braid.sleep(0.5) end)
d.name = "d"
pcall(braid.timeout, 0.2, function() d:await() end)
d:cancel("enough")
]]

  local path, root   -- root: the root task's name, the script's path (escaped)
  setup(function()
    local script = os.tmpname()
    root = script:gsub("%p", "%%%0")
    local f = assert(io.open(script, "w"))
    f:write(WORKFLOW)
    f:close()
    path = os.tmpname()
    local _, err, code = sh("'" .. BIN .. "' --virtual-time --trace " .. path .. " " .. script)
    os.remove(script)
    assert(code == 0, err)
  end)
  teardown(function() os.remove(path) end)

  local function section(out, title)
    return assert(out:match(title .. "[^\n]*\n(.-)\n\n") or out:match(title .. "[^\n]*\n(.*)$"),
                  "no section " .. title .. " in:\n" .. out)
  end

  for _, pure in ipairs({false, true}) do
    it("names the critical path on the virtual clock" ..
       (pure and " (without lua-cjson)" or ""), function()
      local out, err, code = sh((pure and "env BRAID_TRACE_PURE=1 " or "") ..
                                "'" .. BIN .. "' trace " .. path)
      assert.equal(0, code, err)
      assert.truthy(out:match("^braid trace: 5 tasks, 3%.200 s %(virtual clock%)"))
      local cp = section(out, "critical path")
      local lines = {}
      for l in cp:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equal(3, #lines, cp)
      assert.truthy(lines[1]:match("^%s+0 s%s+%+1%.000 s%s+a #%d+: sleep 1$"), lines[1])
      assert.truthy(lines[2]:match("^%s+1%.000 s%s+%+2%.000 s%s+b #%d+: sleep 2$"), lines[2])
      assert.truthy(lines[3]:match(root .. " #1: await task %d+ %(cut short by a cancellation%)$"), lines[3])
      -- task c is not on it (preceded by a space: the root, the script's
      -- path, may itself end in "c")
      assert.falsy(cp:match("%sc #%d"), cp)
      local waits = section(out, "top waits by total time")
      assert.truthy(waits:match("^%s+3%.000 s%s+1x%s+braid%.gather of 2\n"), waits)
      local slow = section(out, "slowest tasks")
      assert.truthy(slow:match("^%s+3%.200 s%s+" .. root .. " #1 %(ok%)"), slow)
      assert.truthy(slow:match("200%.0 ms%s+d #%d+ %(cancelled%)"), slow)
      local c = section(out, "cancellations")
      assert.truthy(c:match("3%.200 s%s+by a timeout in " .. root .. " #1: reached no other task"), c)
      assert.truthy(c:match("by task " .. root .. " #1 %(enough%): reached d #%d+"), c)
    end)
  end

  it("sums a long critical path by task and wait", function()
    local p = os.tmpname()
    local _, err, code = sh("'" .. BIN .. "' --virtual-time --trace " .. p ..
      " -e 'for i = 1, 40 do braid.sleep(0.1) end braid.sleep(1)'")
    assert.equal(0, code, err)
    local out
    out, err, code = sh("'" .. BIN .. "' trace " .. p)
    os.remove(p)
    assert.equal(0, code, err)
    local cp = section(out, "critical path")
    assert.truthy(cp:match("^  41 steps; by task and wait, biggest first:\n"), cp)
    assert.truthy(cp:match("\n%s+4%.000 s%s+40x%s+%(command line%) #1: sleep 0%.1"), cp)
    assert.truthy(cp:match("\n%s+1%.000 s%s+1x%s+%(command line%) #1: sleep 1"), cp)
  end)

  it("draws the timeline as an SVG that a renderer accepts", function()
    local svg, png = os.tmpname(), os.tmpname()
    local _, err, code = sh("'" .. BIN .. "' trace " .. path .. " --svg " .. svg)
    assert.equal(0, code, err)
    local f = assert(io.open(svg))
    local text = f:read("a")
    f:close()
    for _, name in ipairs({(root:gsub("%%", "")) .. " #1", "a #", "b #", "c #", "d #"}) do
      assert.truthy(text:find(">" .. name, 1, true), name)
    end
    assert.truthy(text:find("sleep 2.5", 1, true))
    local _, rerr, rcode = h.sh("rsvg-convert -o " .. png .. " " .. svg)
    assert.equal(0, rcode, rerr)
    f = assert(io.open(png, "rb"))
    assert.equal("\137PNG", f:read(4))
    f:close()
    os.remove(svg)
    os.remove(png)
  end)

  it("follows a map's limit from a task to the sibling whose end started it",
     function()
    local p = os.tmpname()
    local _, err, code = sh("'" .. BIN .. "' --virtual-time --trace " .. p ..
      " -e 'braid.map({1, 2, 3}, function(x) braid.sleep(x) end, {limit = 1})'")
    assert.equal(0, code, err)
    local out
    out, err, code = sh("'" .. BIN .. "' trace " .. p)
    os.remove(p)
    assert.equal(0, code, err)
    local cp = section(out, "critical path")
    assert.truthy(cp:match("^%s+0 s%s+%+1%.000 s%s+[^\n]* #2: sleep 1\n"
      .. "%s+1%.000 s%s+%+2%.000 s%s+[^\n]* #3: sleep 2\n"
      .. "%s+3%.000 s%s+%+3%.000 s%s+[^\n]* #4: sleep 3$"), cp)
  end)

  -- review of 2026-12-02: each step of the critical path scanned the
  -- task's children and its parent's slices: 16000 gathers of two took
  -- 37 s, and a trace of 64000 tasks (this one) minutes. Now a few
  -- seconds: `sh` gives up after 60.
  it("reads a trace of 64000 tasks in linear time", function()
    local p = os.tmpname()
    local _, err, code = sh("'" .. BIN .. "' --trace " .. p .. " -e 'for i = 1, "
      .. "32000 do braid.gather(braid.yield, braid.yield) end'")
    assert.equal(0, code, err)
    local out
    local t0 = os.time()
    out, err, code = sh("'" .. BIN .. "' trace " .. p)
    os.remove(p)
    assert.equal(0, code, ("%s (exit %s after %d s)"):format(err, code,
                                                           os.time() - t0))
    assert.truthy(out:match("^braid trace: 64001 tasks"), out)
    assert.truthy(section(out, "critical path"):match("^  %d+ steps; by task"))
  end)

  -- review of 2026-12-02: `"ts":"abc"` raised an internal error
  -- ("attempt to compare number with string")
  it("names the file, the event and the field of a wrong type", function()
    local p = os.tmpname()
    local f = assert(io.open(p, "w"))
    f:write('{"traceEvents":[\n',
      '{"ph":"M","pid":1,"tid":1,"name":"thread_name","args":{"name":"main #1","parent":0}},\n',
      '{"ph":"B","pid":1,"tid":1,"ts":"abc","name":"run"}\n]}\n')
    f:close()
    for _, pure in ipairs({false, true}) do
      local out, err, code = sh((pure and "env BRAID_TRACE_PURE=1 " or "") ..
                                "'" .. BIN .. "' trace " .. p)
      assert.equal(1, code, out)
      assert.truthy(err:find(p .. ": bad event: event 2 (ph \"B\", tid 1): "
        .. "'ts' is \"abc\", a number expected", 1, true), err)
      assert.falsy(err:match("attempt to"), err)
    end
    os.remove(p)
  end)

  -- review of 2026-12-02: a trace cut off by kill -9 was refused whole
  -- ("unexpected end of string"); Perfetto reads such files
  it("reads a cut-off trace up to its last complete event, and says so",
     function()
    local f = assert(io.open(path, "rb"))
    local text = f:read("a")
    f:close()
    local lines = {}
    for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
    local last = lines[#lines - 1]   -- the last event, before "]}"
    local cuts = {
      -- the array missing its end
      table.concat(lines, "\n", 1, #lines - 1) .. "\n",
      -- and the last event cut mid-way, mid-string and mid-number
      table.concat(lines, "\n", 1, #lines - 2) .. "\n" .. last:sub(1, 10),
      table.concat(lines, "\n", 1, #lines - 2) .. "\n" ..
        last:match('^(.-"ts":%d)'),
    }
    local p = os.tmpname()
    for i, cut in ipairs(cuts) do
      f = assert(io.open(p, "wb"))
      f:write(cut)
      f:close()
      for _, pure in ipairs({false, true}) do
        local out, err, code = sh((pure and "env BRAID_TRACE_PURE=1 " or "") ..
                                  "'" .. BIN .. "' trace " .. p)
        assert.equal(0, code, ("cut %d: %s"):format(i, err))
        assert.truthy(err:find(p .. ": cut off", 1, true), err)
        assert.truthy(err:match("read up to its last complete event, event "
          .. (i == 1 and #lines - 2 or #lines - 3) .. "\n$"), err)
        assert.truthy(out:match("^braid trace: 5 tasks"), out)
      end
    end
    -- cut inside the header: nothing to read
    f = assert(io.open(p, "wb"))
    f:write(text:sub(1, 20))
    f:close()
    local _, err, code = sh("'" .. BIN .. "' trace " .. p)
    assert.equal(1, code)
    assert.truthy(err:match("not a trace"), err)
    os.remove(p)
  end)

  it("refuses what is not a trace, and bad usage", function()
    local p = os.tmpname()
    local f = assert(io.open(p, "w"))
    f:write("{nope")
    f:close()
    local _, err, code = sh("'" .. BIN .. "' trace " .. p)
    os.remove(p)
    assert.equal(1, code)
    assert.truthy(err:match("not a trace"))
    _, err, code = sh("'" .. BIN .. "' trace")
    assert.equal(2, code)
    assert.truthy(err:match("usage: braid trace"))
    _, err, code = sh("'" .. BIN .. "' trace /nonexistent.json")
    assert.equal(1, code)
  end)

  it("says why a directory cannot be read, as for a missing file", function()
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute("mkdir " .. d))
    local _, err, code = sh("'" .. BIN .. "' trace " .. d)
    os.execute("rmdir " .. d)
    assert.equal(1, code)
    assert.equal("braid trace: " .. d .. ": Is a directory\n", err)
  end)
end)
