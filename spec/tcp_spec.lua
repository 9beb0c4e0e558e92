-- tcp_spec.lua: braid.tcp on 127.0.0.1 only. Outside peers (socat) are
-- started in the background by the shell and killed in `finally`. What a
-- TCP stream shares with a process's pipes (the line limit, "\r\n", partial
-- reads, the end, a cancelled write) is in stream_spec.lua, for both.
local braid = require "braid"
local h = require "helper"

local LO <const> = "127.0.0.1"

-- An echo server in the current scope: each line comes back.
local function echo_server(opts)
  return braid.tcp.listen(LO, 0, function(s)
    while true do
      local data = s:read()
      if data == nil then break end
      s:write(data)
    end
    s:close()
  end, opts)
end

-- A port that nothing listens on (it did a moment ago).
local function closed_port()
  local srv = braid.tcp.listen(LO, 0, function() end)
  local port = srv:port()
  srv:close()
  return port
end

-- A task that ends (cancelled) once gate_open is called: a barrier.
local function gate()
  local t = braid.spawn(braid.sleep, 1e9)
  return function() pcall(t.await, t) end, function() t:cancel("open") end
end

-- Waits, bounded, until cond() holds; fails the spec when it never does.
local function wait_until(cond, what, limit)
  local t0 = braid.now()
  while not cond() do
    if braid.now() - t0 > (limit or 10) then error("timed out waiting: " .. what) end
    braid.sleep(0.01)
  end
end

local slurp = h.slurp

describe("braid.tcp", function()
  it("echoes round trips between braid client and braid server", h.run(function()
    braid.scope(function()
      local srv = echo_server()
      local c <close> = braid.tcp.connect(LO, srv:port())
      for i = 1, 200 do
        local msg = ("message %d\n"):format(i)
        c:write(msg)
        assert.are.equal(msg, c:read_line() .. "\n")
      end
      local big = string.rep("0123456789abcdef", 64 * 1024)   -- 1 MiB
      local got = {}
      braid.gather(function() c:write(big) end, function()
        local n = 0
        while n < #big do
          local d = c:read(100000)
          assert.is_true(#d <= 100000)
          got[#got + 1] = d
          n = n + #d
        end
      end)
      assert.is_true(table.concat(got) == big)
      srv:close()
    end)
  end))

  it("raises an io error with code ECONNREFUSED on a closed port", h.run(function()
    local ok, e = pcall(braid.tcp.connect, LO, closed_port())
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.are.equal("ECONNREFUSED", e.code)
    assert.is_true(braid.is_error(e))
  end))

  -- C stops at a zero byte: "127.0.0.1\0.evil" reached 127.0.0.1
  it("refuses a host with a zero byte, or empty, in every call that takes one", h.run(function()
    local nul, port = LO .. "\0.evil.example", closed_port()
    local calls = {
      ["braid.tcp.connect"] = function(host) return braid.tcp.connect(host, port) end,
      ["braid.tcp.listen"] = function(host) return braid.tcp.listen(host, 0, function() end) end,
      ["braid.udp.bind"] = function(host) return braid.udp.bind(host, 0) end,
      ["sock:send"] = function(host)
        local sock <close> = braid.udp.open()
        return sock:send("x", host, port)
      end,
    }
    for name, call in pairs(calls) do
      for _, host in ipairs{nul, ""} do
        local ok, err = pcall(call, host)
        assert.is_false(ok, name .. " took " .. ("%q"):format(host))
        assert.equal("usage", err.kind, name .. ": " .. tostring(err))
        assert.matches(name .. "' (host name or address expected", tostring(err), 1, true)
        assert.matches("tcp_spec.lua:%d+:", tostring(err))
      end
    end
  end))

  it("raises an EAI_ code when the name does not resolve", h.run(function()
    local ok, e = pcall(braid.tcp.connect, "no-such-host.invalid", 80, {timeout = 10})
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.matches("^EAI_", e.code)
  end))

  it("resolves localhost and connects", h.run(function()
    braid.scope(function()
      local srv = echo_server()
      local c <close> = braid.tcp.connect("localhost", srv:port(), {timeout = 10})
      c:write("hi\n")
      assert.are.equal("hi", c:read_line())
      srv:close()
    end)
  end))

  it("reads lines across chunk boundaries, a long line and the unterminated rest", h.run(function()
    local long = string.rep("x", 300 * 1024)   -- longer than the 64 KiB buffer
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        for _, part in ipairs({"hel", "lo\r\nwor", "ld\n\n", long:sub(1, 70000),
                               long:sub(70001) .. "\nta", "il"}) do
          s:write(part)
          braid.sleep(0.01)   -- separate chunks are likely; not relied on
        end
        s:close()
      end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      assert.are.equal("hello", c:read_line())
      assert.are.equal("world", c:read_line())
      assert.are.equal("", c:read_line())
      assert.is_true(c:read_line() == long)
      assert.are.equal("tail", c:read_line())
      assert.is_nil(c:read_line())
      assert.is_nil(c:read())
      srv:close()
    end)
  end))

  it("iterates lines with stream:lines()", h.run(function()
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        s:write("a\nb\nc\n")
        s:close()
      end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      local got = {}
      for line in c:lines() do got[#got + 1] = line end
      assert.are.same({"a", "b", "c"}, got)
      srv:close()
    end)
  end))

  it("half-closes with shutdown(): the peer reads EOF and can still answer", h.run(function()
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        local n = 0
        for line in s:lines() do n = n + #line end
        s:write("got " .. n .. "\n")
        s:close()
      end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      c:write("abc\ndefg\n")
      c:shutdown()
      assert.are.equal("got 7", c:read_line())
      assert.is_nil(c:read_line())
      srv:close()
    end)
  end))

  it("takes a second shutdown() as done: it returns the stream, no error", h.run(function()
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        s:write("end at " .. #s:read("a") .. "\n")
        s:close()
      end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      c:write("abc")
      assert.are.equal(c, c:shutdown())
      assert.are.equal(c, c:shutdown())
      assert.are.equal("end at 3", c:read_line())
      assert.are.equal(c, c:shutdown())
      local ok, e = pcall(c.write, c, "x")   -- writing after it still fails
      assert.are.equal("io", e.kind)
      c:close()
      ok, e = pcall(c.shutdown, c)
      assert.are.equal("closed", e.kind)
      srv:close()
    end)
  end))

  it("applies back-pressure: a slow reader keeps the writer's memory bounded", h.run(function()
    local chunk, total = 64 * 1024, 50 * 1024 * 1024
    local received = 0
    collectgarbage()
    local base, peak = collectgarbage("count"), 0
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        while true do
          local d = s:read()
          if not d then break end
          received = received + #d
          braid.sleep(0.001)   -- the slow reader
        end
        s:close()
      end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      for i = 1, total // chunk do
        c:write(string.rep(string.char(65 + i % 26), chunk))   -- a fresh string
        if i % 16 == 0 then   -- live memory: what pending writes still hold
          collectgarbage()
          peak = math.max(peak, collectgarbage("count"))
        end
      end
      c:close()
    end)
    assert.are.equal(total, received)
    local grew = (peak - base) / 1024
    assert.is_true(grew < 16, ("Lua memory grew by %.1f MB"):format(grew))
  end))

  it("serves 1,000 concurrent connections", h.run(function()
    local n, active, max_active, done = 1000, 0, 0, 0
    local wait_all, open_all = gate()
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        active = active + 1
        max_active = math.max(max_active, active)
        for line in s:lines() do s:write(line .. "\n") end
        active = active - 1
      end, {backlog = 1024})
      braid.map((function() local l = {} for i = 1, n do l[i] = i end return l end)(),
        function(i)
          local c <close> = braid.tcp.connect(LO, srv:port(), {timeout = 30})
          c:write(i .. "\n")
          assert.are.equal(tostring(i), c:read_line())
          done = done + 1
          if done == n then open_all() end
          wait_all()   -- every connection stays open until all are up
        end)
      srv:close()
    end)
    assert.are.equal(n, done)
    assert.are.equal(n, max_active)
  end))

  it("talks to a real external server (socat running cat)", h.run(function()
    local port = closed_port()
    local pidfile = os.tmpname()
    finally(function()
      local pid = slurp(pidfile)
      if pid and pid:match("%d+") then os.execute("kill " .. pid:match("%d+") .. " 2>/dev/null") end
      os.remove(pidfile)
    end)
    assert.is_true(os.execute(("socat TCP-LISTEN:%d,bind=%s,reuseaddr EXEC:cat " ..
      ">/dev/null 2>&1 & echo $! > %s"):format(port, LO, pidfile)))
    local c
    wait_until(function()
      local ok, r = pcall(braid.tcp.connect, LO, port)
      if ok then c = r return true end
      assert.are.equal("ECONNREFUSED", r.code)
    end, "socat to listen")
    c:write("through socat\nand back\n")
    assert.are.equal("through socat", c:read_line())
    assert.are.equal("and back", c:read_line())
    c:shutdown()   -- cat sees EOF and exits; socat closes
    assert.is_nil(c:read())
    c:close()
  end))

  it("serves a real external client (socat), which half-closes", h.run(function()
    local base = os.tmpname()
    finally(function() os.remove(base) os.remove(base .. ".out") os.remove(base .. ".done") end)
    local lines = {}
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        for line in s:lines() do lines[#lines + 1] = line end   -- until socat's EOF
        s:write("got " .. #lines .. "\n")
        s:close()
      end)
      assert.is_true(os.execute(("(printf 'ping\\npong\\n' | socat -t 10 - TCP:%s:%d " ..
        "> %s.out 2>&1; echo done > %s.done) >/dev/null 2>&1 &"):format(LO, srv:port(), base, base)))
      wait_until(function() return slurp(base .. ".done") end, "socat to finish", 20)
      srv:close()
    end)
    assert.are.same({"ping", "pong"}, lines)
    assert.are.equal("got 2\n", slurp(base .. ".out"))
  end))
end)

describe("braid.tcp errors", function()
  it("raises EPIPE or ECONNRESET writing to a peer that closed (no SIGPIPE death)", h.run(function()
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s) s:close() end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      assert.is_nil(c:read())   -- the peer's close reached us
      local ok, e
      for _ = 1, 100 do
        ok, e = pcall(c.write, c, string.rep("x", 65536))
        if not ok then break end
      end
      assert.is_false(ok)
      assert.are.equal("io", e.kind)
      assert.is_true(e.code == "EPIPE" or e.code == "ECONNRESET", e.code)
      srv:close()
    end)
  end))

  it("lets only one task read a stream at a time", h.run(function()
    braid.scope(function()
      local srv = echo_server()
      local c <close> = braid.tcp.connect(LO, srv:port())
      local t = braid.spawn(c.read, c)
      braid.yield()
      local ok, e = pcall(c.read, c)
      assert.are.equal("usage", e.kind)
      c:write("x")
      assert.are.equal("x", t:await())
      srv:close()
    end)
  end))
end)

-- A python3 client that sends `data` to port, then aborts (SO_LINGER 0:
-- a RST, no FIN) and exits only once the server's socket has taken the
-- reset (its connection is gone from /proc/net/tcp), so a braid reader
-- that starts after braid.exec returns starts after the reset.
local ABORT <const> = [[
import socket, struct, sys, time
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(sys.argv[2].encode())
me = s.getsockname()[1]
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
time.sleep(0.1)   # the data is in the server's socket before the RST
s.close()
pair = ":%04X %08X:%04X" % (port, 0x0100007F, me)
for _ in range(1000):
    if not any(pair in l for l in open("/proc/net/tcp")): sys.exit(0)
    time.sleep(0.01)
sys.exit(1)
]]

describe("braid.tcp after a reset by the peer", function()
  -- The server's stream for a client that sent data and aborted; the
  -- handler holds it open until done.
  local function reset_stream(srvs, data)
    local ch, done = braid.channel(1), braid.channel()
    local srv = braid.tcp.listen(LO, 0, function(s)
      ch:send(s)
      done:recv()
    end)
    srvs[#srvs + 1] = function() done:close(); srv:close() end
    assert.are.equal(0, braid.exec({"/usr/bin/python3", "-c", ABORT,
                                    tostring(srv:port()), data}).code)
    return ch:recv()
  end

  local function check_reset(ok, e)
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.are.equal("ECONNRESET", e.code)
  end

  it("raises ECONNRESET in read('a'), read_line and read(n) started after it",
     h.run(function()
    local srvs = {}
    local s = reset_stream(srvs, "partial data, then the peer aborts")
    check_reset(pcall(s.read, s, "a"))
    s = reset_stream(srvs, "one line\npartial")
    assert.are.equal("one line", s:read_line())
    check_reset(pcall(s.read_line, s))
    s = reset_stream(srvs, "partial")
    assert.are.equal("partial", s:read(100))   -- the bytes first
    check_reset(pcall(s.read, s, 100))
    for _, f in ipairs(srvs) do f() end
  end))

  it("raises from every shutdown() that cannot send the end, not only the first",
     h.run(function()
    local srvs = {}
    local s = reset_stream(srvs, "x")
    local ok1, e1 = pcall(s.shutdown, s)
    local ok2, e2 = pcall(s.shutdown, s)
    assert.is_false(ok1, "the first shutdown after a reset")
    assert.is_false(ok2, "the second shutdown after a reset")
    assert.are.equal(e1.code, e2.code)
    for _, f in ipairs(srvs) do f() end
  end))
end)

describe("braid.tcp cancellation", function()
  it("undoes a read that waits forever; the stream stays usable", h.run(function()
    braid.scope(function()
      local srv = echo_server()
      local c <close> = braid.tcp.connect(LO, srv:port())
      local t = braid.spawn(c.read, c)
      braid.yield()
      assert.are.equal("suspended", t:status())
      t:cancel("enough")
      local ok, e = pcall(t.await, t)
      assert.is_true(braid.is_cancelled(e))
      local ok2, e2 = pcall(braid.timeout, 0.05, c.read, c)
      assert.is_true(braid.is_timeout(e2))
      c:write("still here\n")
      assert.are.equal("still here", c:read_line())
      srv:close()
    end)
  end))

  it("undoes a connect cancelled immediately or while pending", h.run(function()
    braid.scope(function()
      local srv = echo_server()
      local t = braid.spawn(braid.tcp.connect, LO, srv:port())
      t:cancel()
      assert.is_true(braid.is_cancelled(select(2, pcall(t.await, t))))
      for _, host in ipairs({LO, "localhost"}) do
        t = braid.spawn(braid.tcp.connect, host, srv:port())
        braid.yield()   -- it has started connecting (or resolving)
        t:cancel()
        local ok, e = pcall(t.await, t)
        assert.is_true(braid.is_cancelled(e))
      end
      srv:close()
    end)
  end))

  it("server:close() stops listening and cancels its handlers", h.run(function()
    local n, ready, cancelled = 5, 0, 0
    local port
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        ready = ready + 1
        local ok, e = pcall(s.read, s)
        if braid.is_cancelled(e) then cancelled = cancelled + 1 end
        error(e, 0)
      end)
      port = srv:port()
      local clients = {}
      for i = 1, n do clients[i] = braid.tcp.connect(LO, port) end
      wait_until(function() return ready == n end, "handlers to start")
      srv:close()
      srv:close()   -- twice is once
      for i = 1, n do
        assert.is_nil(clients[i]:read())   -- the handler's stream was closed
        clients[i]:close()
      end
    end)
    assert.are.equal(n, cancelled)
    local ok, e = pcall(braid.tcp.connect, LO, port)
    assert.are.equal("ECONNREFUSED", e.code)
  end))

  it("bounds connect with opts.timeout and braid.timeout", h.run(function()
    -- A full backlog would be needed to stall a loopback connect; instead a
    -- zero timeout must fire before any connect can complete.
    local port = closed_port()
    local ok, e = pcall(braid.timeout, 0, braid.tcp.connect, LO, port)
    assert.is_true(braid.is_timeout(e))
    ok, e = pcall(braid.tcp.connect, "localhost", port, {timeout = 0})
    assert.are.equal("io", e.kind)
    assert.is_true(e.code == "ETIMEDOUT" or e.code == "ECONNREFUSED", e.code)
  end))
end)

describe("braid.tcp resources", function()
  it("closes a stream still open when its scope ends", h.run(function()
    local eof = false
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        eof = s:read() == nil
      end)
      local c
      braid.scope(function() c = braid.tcp.connect(LO, srv:port()) end)
      local ok, e = pcall(c.read, c)
      assert.are.equal("closed", e.kind)
      c:close()   -- harmless
    end)
    assert.is_true(eof)
  end))

  it("closes a server when its scope ends", h.run(function()
    local port
    braid.scope(function()
      port = braid.tcp.listen(nil, 0, function() end):port()
    end)
    local ok, e = pcall(braid.tcp.connect, LO, port)
    assert.are.equal("ECONNREFUSED", e.code)
  end))

  it("closes a stream that is collected", h.run(function()
    local eof = false
    braid.scope(function()
      local srv = braid.tcp.listen(nil, 0, function(s)
        eof = s:read() == nil
      end)
      do local c = braid.tcp.connect(LO, srv:port()) end
      collectgarbage()
      collectgarbage()
    end)
    assert.is_true(eof)
  end))

  it("fails the listening scope when a handler fails (it is a child task)", h.run(function()
    local boom = {}
    local ok, e = pcall(braid.scope, function()
      local srv = braid.tcp.listen(nil, 0, function() error(boom) end)
      local c <close> = braid.tcp.connect(LO, srv:port())
      c:read()   -- cancelled by the failure
    end)
    assert.is_true(rawequal(boom, e))
  end))

  it("rejects bad arguments with usage errors", h.run(function()
    local ok, e = pcall(braid.tcp.connect, LO, 70000)
    assert.are.equal("usage", e.kind)
    ok, e = pcall(braid.tcp.listen, "not an address", 0, print)
    assert.are.equal("usage", e.kind)
    ok, e = pcall(braid.tcp.listen, nil, 0, 42)
    assert.are.equal("usage", e.kind)
    ok, e = pcall(braid.tcp.connect, LO, 1, {bogus = 1})
    assert.are.equal("usage", e.kind)
  end))
end)

describe("examples/port_check.lua", function()
  it("reports its own listener open and a closed port closed, and exits 0", function()
    local out, err, code = h.braid("examples/port_check.lua")
    assert.are.equal(0, code, err)
    assert.matches("127%.0%.0%.1:%d+%s+open", out)
    assert.matches("closed %(E[A-Z]+%)", out)
  end)
end)

describe("braid.tcp.listen on a port in use", function()
  it("raises kind io with code EADDRINUSE naming the address, and leaves nothing open", h.run(function()
    local srv = braid.tcp.listen(LO, 0, function() end)
    local ok, e = pcall(braid.tcp.listen, LO, srv:port(), function() end)
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.are.equal("EADDRINUSE", e.code)
    assert.matches("tcp.listen 127.0.0.1:" .. srv:port(), e.message, 1, true)
    srv:close()
  end))
end)

-- Regression (review of 2026-12-02): tcp.listen("0", port, h) listened on
-- every interface: "0", "0x0", "2130706433"... are not addresses braid
-- takes, but getaddrinfo read them with inet_aton's old syntax.
describe("braid.tcp hosts in inet_aton's old forms", function()
  local forms = {"0", "00", "0.0", "0x0", "0177.0.0.1", "2130706433", "127.1",
                 "0x7f.1"}
  it("are usage errors for listen, connect and udp, not names", h.run(function()
    for _, host in ipairs(forms) do
      local ok, e = pcall(braid.tcp.listen, host, 0, function() end)
      if ok then e:close() end
      assert.is_false(ok, "tcp.listen " .. host)
      assert.are.equal("usage", e.kind, host .. ": " .. tostring(e))
      assert.matches("dotted quad", e.message, 1, true)
      ok, e = pcall(braid.tcp.connect, host, 9, {timeout = 1})
      assert.are.equal("usage", e.kind, host .. ": " .. tostring(e))
      ok, e = pcall(braid.udp.bind, host, 0)
      assert.are.equal("usage", e.kind, host .. ": " .. tostring(e))
      local u <close> = braid.udp.open()
      ok, e = pcall(u.send, u, "x", host, 9)
      assert.are.equal("usage", e.kind, host .. ": " .. tostring(e))
    end
    -- the proper forms still work
    for _, host in ipairs{"0.0.0.0", "127.0.0.1", "::1", "localhost"} do
      local srv <close> = braid.tcp.listen(host, 0, function() end)
      assert.is_true(srv:port() > 0)
    end
  end))
end)
