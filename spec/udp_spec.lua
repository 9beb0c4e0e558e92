-- spec/udp_spec.lua (issue 19): braid.udp.bind, braid.udp.open and the
-- sockets they return.
local braid = require "braid"
local h = require "helper"

describe("braid.udp", function()
  it("sends datagrams and receives them with the sender's address",
     h.run(function()
    local srv <close> = braid.udp.bind("127.0.0.1", 0)
    local host, port = srv:address()
    assert.are.equal("127.0.0.1", host)
    local cli <close> = braid.udp.open()
    local echo = braid.spawn(function()
      for _ = 1, 3 do
        local d, h2, p2 = srv:recv()
        srv:send(d:upper(), h2, p2)
      end
    end)
    for i = 1, 3 do
      assert.are.equal(cli, cli:send("ping" .. i, host, port))
      local d, h2, p2 = cli:recv()
      assert.are.same({"PING" .. i, host, port}, {d, h2, p2})
    end
    echo:await()
  end))

  it("keeps datagrams that arrive while nobody receives", h.run(function()
    local a <close> = braid.udp.bind("127.0.0.1", 0)
    local b <close> = braid.udp.bind("127.0.0.1", 0)
    local host, port = a:address()
    for i = 1, 5 do b:send("d" .. i, host, port) end
    for i = 1, 5 do assert.are.equal("d" .. i, (a:recv())) end
  end))

  it("carries empty datagrams and large ones", h.run(function()
    local a <close> = braid.udp.bind("127.0.0.1", 0)
    local host, port = a:address()
    local b <close> = braid.udp.open()
    b:send("", host, port)
    assert.are.equal("", (a:recv()))
    local big = ("z"):rep(60000)
    b:send(big, host, port)
    assert.are.equal(big, (a:recv()))
    local ok, e = pcall(b.send, b, ("z"):rep(70000), host, port)
    assert.are.equal("io", e.kind)
    assert.are.equal("EMSGSIZE", e.code)
  end))

  it("works over IPv6", h.run(function()
    local a <close> = braid.udp.bind("::1", 0)
    local host, port = a:address()
    assert.are.equal("::1", host)
    local b <close> = braid.udp.bind("::1", 0)
    b:send("six", host, port)
    assert.are.same({"six", "::1", select(2, b:address())}, {a:recv()})
  end))

  it("is cancellable and bounded by deadlines", h.run(function()
    local a <close> = braid.udp.bind("127.0.0.1", 0)
    local t = braid.spawn(a.recv, a)
    braid.yield()
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
    ok, e = pcall(braid.timeout, 0.05, a.recv, a)
    assert.is_true(braid.is_timeout(e))
    -- still usable afterwards
    local b <close> = braid.udp.open()
    b:send("after", a:address())
    assert.are.equal("after", (a:recv()))
  end))

  it("wakes a receiver with kind closed when the socket closes",
     h.run(function()
    local a = braid.udp.bind("127.0.0.1", 0)
    local ok, e = pcall(braid.scope, function(s)   -- the receiver fails
      s:spawn(a.recv, a)
      braid.yield()
      a:close()
    end)
    assert.are.equal("closed", e.kind)
    assert.matches("sock:recv: the socket was closed while receiving",
                   e.message, 1, true)
    ok, e = pcall(a.recv, a)
    assert.are.equal("closed", e.kind)
    a:close()   -- twice is harmless
  end))

  -- Regression (review of the network and file primitives): bind(port),
  -- with the host left out as "bind([host], port)" documents, raised
  -- "string expected".
  it("binds to 127.0.0.1 when only the port is given", h.run(function()
    local a <close> = braid.udp.bind(0)
    local host, port = a:address()
    assert.are.equal("127.0.0.1", host)
    assert.is_true(port > 0)
    local b <close> = braid.udp.bind(nil, 0)
    b:send("y", host, port)
    assert.are.equal("y", (a:recv()))
    assert.has_error(function() braid.udp.bind("0") end)
  end))

  -- Regression (review of 2026-12-02): address() before the first send
  -- raised kind "io", EBADF.
  it("gives no address for an open() socket before its first send", h.run(function()
    local b <close> = braid.udp.bind("127.0.0.1", 0)
    local a <close> = braid.udp.open()
    assert.are.same({n = 1}, table.pack(a:address()))
    a:send("x", b:address())
    local host, port = a:address()
    assert.is_string(host)
    assert.is_true(port > 0)
    assert.are.same({"x", "127.0.0.1", port}, {b:recv()})
  end))

  it("carries a datagram up to the protocol's limit: 65507 bytes over IPv4, 65527 over IPv6",
     h.run(function()
    for _, c in ipairs{{"127.0.0.1", 65507}, {"::1", 65527}} do
      local b <close> = braid.udp.bind(c[1], 0)
      local a <close> = braid.udp.open()
      a:send(("x"):rep(c[2]), b:address())
      assert.are.equal(c[2], #b:recv())
      local ok, e = pcall(a.send, a, ("x"):rep(c[2] + 1), b:address())
      assert.are.equal("EMSGSIZE", e.code)
    end
  end))

  it("is closed with the scope that made it", h.run(function()
    local a
    braid.scope(function() a = braid.udp.bind("127.0.0.1", 0) end)
    local ok, e = pcall(a.address, a)
    assert.are.equal("closed", e.kind)
  end))

  it("lets one task receive at a time", h.run(function()
    local a <close> = braid.udp.bind("127.0.0.1", 0)
    local t = braid.spawn(a.recv, a)
    braid.yield()
    local ok, e = pcall(a.recv, a)
    assert.are.equal("usage", e.kind)
    assert.matches("another task is receiving", e.message)
    t:cancel()
    pcall(t.await, t)
  end))

  it("raises kind io for a port in use, usage for a bad address",
     h.run(function()
    local a <close> = braid.udp.bind("127.0.0.1", 0)
    local ok, e = pcall(braid.udp.bind, "127.0.0.1", select(2, a:address()))
    assert.are.equal("io", e.kind)
    assert.are.equal("EADDRINUSE", e.code)
    ok, e = pcall(braid.udp.bind, "not an address", 0)
    assert.are.equal("usage", e.kind)
    ok, e = pcall(a.send, a, "x", "nowhere", 9)
    assert.are.equal("usage", e.kind)
  end))
end)
