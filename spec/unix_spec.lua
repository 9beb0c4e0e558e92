-- spec/unix_spec.lua (issue 19): braid.unix.connect and braid.unix.listen,
-- the same stream and server objects as TCP; and braid.tcp.listen on host
-- names and IPv6.
local braid = require "braid"
local h = require "helper"

local function sock_path()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".sock"
end

local function exists(p)
  return pcall(braid.fs.stat, p)
end

describe("braid.unix", function()
  it("connects to a listener and streams lines both ways", h.run(function()
    local path = sock_path()
    local srv <close> = braid.unix.listen(path, function(s)
      for line in s:lines() do s:write(line:upper() .. "\n") end
    end)
    assert.are.equal(path, srv:path())
    assert.is_nil(srv:port())
    local c <close> = braid.unix.connect(path)
    c:write("hello\nworld\n")
    assert.are.equal("HELLO", c:read_line())
    assert.are.equal("WORLD", c:read_line())
    c:shutdown()
    assert.is_nil(c:read_line())
    assert.matches("^<unix stream", tostring(c))
  end))

  it("gives the same stream objects as TCP", h.run(function()
    local path = sock_path()
    local srv <close> = braid.unix.listen(path, function(s) s:write("x") end)
    local u <close> = braid.unix.connect(path)
    local tsrv <close> = braid.tcp.listen("127.0.0.1", 0, function() end)
    local t <close> = braid.tcp.connect("127.0.0.1", tsrv:port())
    assert.are.equal(getmetatable(t), getmetatable(u))
    assert.are.equal("x", u:read("a"))
  end))

  it("removes the socket file when the server closes", h.run(function()
    local path = sock_path()
    local srv = braid.unix.listen(path, function() end)
    assert.is_true(exists(path))
    srv:close()
    assert.is_false(exists(path))
    braid.scope(function()
      braid.unix.listen(path, function() end)
      assert.is_true(exists(path))
    end)
    assert.is_false(exists(path))   -- closed with its scope
  end))

  it("removes only its own socket file: not a file or socket put there since",
     h.run(function()
    local path = sock_path()
    local srv = braid.unix.listen(path, function() end)
    os.remove(path)                 -- someone else removes it
    local f = assert(io.open(path, "w"))
    f:write("precious")
    f:close()
    srv:close()
    f = assert(io.open(path))
    assert.are.equal("precious", f:read("a"))
    f:close()
    os.remove(path)
    -- a second server that took the path over keeps its socket
    local first = braid.unix.listen(path, function() end)
    os.remove(path)
    local second <close> = braid.unix.listen(path, function(s)
      s:write("second")
    end)
    first:close()
    assert.is_true(exists(path))
    local c <close> = braid.unix.connect(path)
    assert.are.equal("second", c:read("a"))
    second:close()
    assert.is_false(exists(path))
  end))

  it("replaces a stale socket file but not a live one or another file",
     h.run(function()
    local path = sock_path()
    -- a socket file nobody listens on, as a crashed server leaves it
    assert.are.equal(0, braid.exec({"/usr/bin/python3", "-c",
      "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
      path}).code)
    assert.is_true(exists(path))
    local srv <close> = braid.unix.listen(path, function(s)
      pcall(s.write, s, "ok")
    end)
    local c <close> = braid.unix.connect(path)
    assert.are.equal("ok", c:read("a"))
    local ok, e = pcall(braid.unix.listen, path, function() end)
    assert.are.equal("io", e.kind)
    assert.are.equal("EADDRINUSE", e.code)
    local plain = os.tmpname()
    ok, e = pcall(braid.unix.listen, plain, function() end)
    assert.are.equal("EADDRINUSE", e.code)
    assert.is_true(exists(plain))
    os.remove(plain)
  end))

  -- Regression (review of 2026-12-02): the stale-socket check connected
  -- to a live server and closed at once, so the live server's handler died
  -- on `stream:write: broken pipe`.
  it("leaves a live server alone when refusing its path, also through a relative path",
     h.run(function()
    local path = sock_path()
    local seen = braid.channel(10)
    local srv <close> = braid.unix.listen(path, function(s)
      seen:send(s:read_line() or "(closed at once)")
    end)
    local ok, e = pcall(braid.unix.listen, path, function() end)
    assert.are.equal("EADDRINUSE", e.code)
    -- the same file by another name, from another process: the check
    -- compares the file itself
    local dir, base = path:match("^(.*)/([^/]*)$")
    local script = h.script('local ok, e = pcall(braid.unix.listen, arg[1], print) ' ..
                            'print(e.code)')
    local r = braid.exec({os.getenv("BRAID_BIN"), script, base}, {cwd = dir})
    os.remove(script)
    assert.are.equal("EADDRINUSE\n", r.stdout)
    -- the first connection the server sees is this one
    local c <close> = braid.unix.connect(path)
    c:write("mine\n")
    assert.are.equal("mine", (seen:recv()))
    assert.is_true(exists(path))
  end))

  it("uses Linux's abstract names for @name, with no file", h.run(function()
    local name = "@braid-unix-spec-" .. braid.pid()
    local srv <close> = braid.unix.listen(name, function(s) s:write("abs") end)
    assert.are.equal(name, srv:path())
    local c <close> = braid.unix.connect(name)
    assert.are.equal("abs", c:read("a"))
    assert.is_false(exists(name))
  end))

  it("raises kind io with the code when nothing listens", h.run(function()
    local ok, e = pcall(braid.unix.connect, sock_path())
    assert.are.equal("io", e.kind)
    assert.are.equal("ENOENT", e.code)
    ok, e = pcall(braid.unix.connect, "@braid-nobody-" .. braid.pid())
    assert.are.equal("ECONNREFUSED", e.code)
  end))

  it("refuses an empty path, a NUL byte and a path too long", h.run(function()
    for _, p in ipairs({"", "a\0b", ("x"):rep(200)}) do
      local ok, e = pcall(braid.unix.connect, p)
      assert.are.equal("usage", e.kind)
      ok, e = pcall(braid.unix.listen, p, function() end)
      assert.are.equal("usage", e.kind)
    end
  end))

  it("raises ECONNRESET after a peer that closed with data unread, however late",
     h.run(function()
    -- The kernel resets a unix socket whose peer closed without reading
    -- what it was sent; a read that starts after the close raises it too.
    local path = sock_path()
    local ch, done = braid.channel(1), braid.channel()
    local srv <close> = braid.unix.listen(path, function(s)
      s:write("unread")
      ch:send(s)
      done:recv()
    end)
    assert.are.equal(0, braid.exec({"/usr/bin/python3", "-c", [[
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"partial")
s.recv(1, socket.MSG_PEEK)   # the server's bytes are here: unread at close
s.close()
]], path}).code)
    local s = ch:recv()
    local ok, e = pcall(s.read, s, "a")
    assert.is_false(ok)
    assert.are.equal("ECONNRESET", e.code)
    done:close()
  end))

  it("closes the handlers' streams with the server", h.run(function()
    local path = sock_path()
    local entered = braid.event()
    local srv = braid.unix.listen(path, function(s)
      entered:set()
      s:read("a")
    end)
    local c <close> = braid.unix.connect(path)
    entered:wait()
    srv:close()
    assert.are.equal("", c:read("a"))   -- the handler's end closed
  end))
end)

describe("braid.tcp.listen on names and IPv6", function()
  it("listens on '::' and IPv6 addresses", h.run(function()
    local srv <close> = braid.tcp.listen("::1", 0, function(s) s:write("six") end)
    local c <close> = braid.tcp.connect("::1", srv:port())
    assert.are.equal("six", c:read("a"))
    local any <close> = braid.tcp.listen("::", 0, function(s) s:write("any") end)
    local c4 <close> = braid.tcp.connect("127.0.0.1", any:port())
    assert.are.equal("any", c4:read("a"))
  end))

  it("resolves a host name", h.run(function()
    -- "LOCALHOST" is not the "localhost" shortcut: the resolver answers
    local srv <close> = braid.tcp.listen("LOCALHOST", 0, function(s)
      s:write("named")
    end)
    local c <close> = braid.tcp.connect("localhost", srv:port())
    assert.are.equal("named", c:read("a"))
  end))

  it("raises kind io naming the host when it cannot be resolved",
     h.run(function()
    local ok, e = pcall(braid.tcp.listen, "no-such-host.invalid", 0,
                        function() end)
    assert.are.equal("io", e.kind)
    assert.matches("^braid.tcp.listen no%-such%-host.invalid: ", e.message)
    assert.is_string(e.code)
  end))
end)
