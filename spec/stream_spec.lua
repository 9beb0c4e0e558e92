-- stream_spec.lua: one stream (issue 12): a TCP stream and a child's stdout
-- read the same way (io/stream.c): the same line limit and its error, the
-- same "\r\n" handling, partial reads, the end, a closed stream, and a
-- cancelled write. Each spec runs once per kind of stream, on loopback.
local braid = require "braid"
local h = require "helper"

-- Each kind opens a stream to read (r) and a feeder (w) that writes what
-- r reads: w.write(s), w.finish() (r then reads the end), and <close>.
local kinds = {
  {
    name = "a TCP stream", method = "stream:", opener = "braid.tcp.connect",
    -- r is the client's end; w writes from the server's end.
    open = function(opts)
      local ends, done = braid.channel(1), braid.event()
      local srv = braid.tcp.listen(nil, 0, function(s)
        ends:send(s)
        done:wait()
      end, opts)
      local r = braid.tcp.connect("127.0.0.1", srv:port(), opts)
      local s = ends:recv()
      return r, setmetatable({
        write = function(data) s:write(data) end,
        finish = function() s:shutdown() end,
      }, {__close = function()
        r:close()
        done:set()
        srv:close()
      end})
    end,
  },
  {
    name = "a process's stdout", method = "proc:", opener = "braid.process",
    -- r is the process; cat copies what w writes to its stdin.
    open = function(opts)
      local p = braid.process({"sh", "-c", "exec cat 2>/dev/null"}, opts)
      return p, setmetatable({
        write = function(data) p:write(data) end,
        finish = function() p:close_stdin() end,
      }, {__close = function() p:close() end})
    end,
  },
}

-- Reads exactly n bytes from r with read(n), however they arrive.
local function read_exactly(r, n)
  local got = {}
  while n > 0 do
    local d = assert(r:read(n))
    assert.is_true(#d >= 1 and #d <= n)
    got[#got + 1] = d
    n = n - #d
  end
  return table.concat(got)
end

for _, k in ipairs(kinds) do
  describe("reading " .. k.name, function()
    it("returns lines without \"\\n\" or \"\\r\\n\", the unterminated rest, then nil", h.run(function()
      local r, w <close> = k.open()
      w.write("a\r\nb\nc\r\r\n\r\n\n")
      w.write("mid\rdle\nlast\r")
      w.finish()
      local got = {}
      for line in r:lines() do got[#got + 1] = line end
      assert.are.same({"a", "b", "c\r", "", "", "mid\rdle", "last\r"}, got)
      assert.is_nil(r:read_line())
      assert.is_nil(r:read_line())
    end))

    it("refuses a line longer than opts.max_line: kind limit; the bytes stay", h.run(function()
      local r, w <close> = k.open({max_line = 10})
      w.write("0123456789\n0123456789\r\n0123456789A\n")
      assert.are.equal("0123456789", r:read_line())
      assert.are.equal("0123456789", r:read_line())   -- its "\r" does not count
      local ok, e = pcall(r.read_line, r)
      assert.is_false(ok)
      assert.are.equal("limit", e.kind)
      assert.is_nil(e.code)
      assert.are.equal(10, e.limit)
      assert.are.equal("max_line", e.option)
      assert.matches(k.method .. "read_line: line longer than 10 bytes", e.message, 1, true)
      assert.matches("max_line option of " .. k.opener, e.message, 1, true)
      ok, e = pcall(r.read_line, r)   -- again: the line is still there
      assert.are.equal("limit", e.kind)
      assert.are.equal("0123456789A\n", read_exactly(r, 12))
      -- Refused as soon as what has come cannot fit, before its "\n".
      w.write("0123456789AB")
      ok, e = pcall(r.read_line, r)
      assert.are.equal("limit", e.kind)
      assert.are.equal("0123456789AB", read_exactly(r, 12))
      w.write("ok\n")
      assert.are.equal("ok", r:read_line())
    end))

    it("refuses a line over 1 MiB by default, and none with max_line = math.huge", h.run(function()
      local line = string.rep("y", 2 * 1024 * 1024)
      for _, limit in ipairs({false, math.huge}) do
        local r, w <close> = k.open(limit and {max_line = limit} or nil)
        local writer = braid.spawn(pcall, w.write, line .. "\nend\n")
        if limit then
          assert.is_true(r:read_line() == line)
          assert.are.equal("end", r:read_line())
          assert.is_true(writer:await())
        else
          local ok, e = pcall(r.read_line, r)
          assert.are.equal("limit", e.kind)
          assert.matches("longer than 1048576 bytes", e.message, 1, true)
          writer:cancel()   -- it waits for a reader that has stopped
        end
      end
    end))

    it("reads partially: read(n) gives what has arrived, at most n bytes, waiting for one", h.run(function()
      local r, w <close> = k.open()
      local t = braid.spawn(r.read, r, 3)
      braid.yield()
      assert.are.equal("suspended", t:status())   -- nothing has arrived
      w.write("xyz123")
      local first = t:await()
      assert.is_true(#first >= 1 and #first <= 3)
      assert.are.equal(("xyz"):sub(1, #first), first)
      assert.are.equal(("xyz123"):sub(#first + 1), read_exactly(r, 6 - #first))
      w.write("line\nrest")
      assert.are.equal("line", r:read_line())       -- lines and reads share one buffer
      assert.are.equal("rest", read_exactly(r, 4))
      local ok, e = pcall(r.read, r, 0)
      assert.are.equal("usage", e.kind)
      assert.matches("bad argument #2 to '" .. k.method .. "read'", e.message, 1, true)
      ok, e = pcall(r.write, r, {})
      assert.are.equal("usage", e.kind)
      assert.matches("bad argument #2 to '" .. k.method .. "write' (string expected)",
                     e.message, 1, true)
    end))

    it("at the end: read(n) and read_line() give nil, read(\"a\") the rest then \"\"", h.run(function()
      local r, w <close> = k.open()
      w.write("one\ntwo")
      w.finish()
      assert.are.equal("one", r:read_line())
      assert.are.equal("two", r:read("a"))
      assert.are.equal("", r:read("a"))
      assert.is_nil(r:read(1))
      assert.is_nil(r:read_line())
      assert.is_nil(r:read(1))
    end))

    it("lets one task read at a time, naming the method", h.run(function()
      local r, w <close> = k.open()
      local t = braid.spawn(r.read_line, r)
      braid.yield()
      local ok, e = pcall(r.read, r, 1)
      assert.are.equal("usage", e.kind)
      assert.matches(k.method .. "read: another task is reading", e.message, 1, true)
      w.write("x\n")
      assert.are.equal("x", t:await())
    end))

    it("raises kind closed, naming the method, once closed", h.run(function()
      local r, w <close> = k.open()
      local t = braid.spawn(pcall, r.read_line, r)
      braid.yield()
      r:close()   -- wakes the reader
      local ok, e = t:await()
      assert.is_false(ok)
      assert.are.equal("closed", e.kind)
      assert.matches("^" .. k.method .. "read_line: ", e.message)
      ok, e = pcall(r.read, r, 1)
      assert.are.equal("closed", e.kind)
    end))
  end)

  describe("writing to " .. k.name:gsub("'s stdout", "'s stdin"), function()
    it("closes it when a write waiting on a reader that never reads is cancelled", h.run(function()
      local r, w <close> = k.open()   -- nobody reads what r writes
      local t = braid.spawn(r.write, r, string.rep("z", 64 * 1024 * 1024))
      braid.yield()
      assert.are.equal("suspended", t:status())
      t:cancel()
      assert.is_true(braid.is_cancelled(select(2, pcall(t.await, t))))
      local ok, e = pcall(r.write, r, "more")
      assert.are.equal("closed", e.kind)
      assert.matches("^" .. k.method .. "write: ", e.message)
    end))
  end)
end
