local braid = require "braid"
local h = require "helper"

local fs = braid.fs

-- A fresh temporary directory, removed by `finally` whatever happens.
local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir " .. d))
  finally(function() os.execute("rm -rf '" .. d .. "'") end)
  return d
end

-- The number of descriptors this process has open (read in its own run).
local function open_fds()
  return braid.run(function() return #fs.list("/proc/self/fd") end)
end

local function expect_io(code, path, fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok)
  assert.are.equal("io", e.kind)
  assert.are.equal(code, e.code)
  assert.are.equal(path, e.path)
  assert.is_truthy(tostring(e):find(path, 1, true))
  return e
end

describe("braid.fs", function()
  it("writes, appends and reads back text and binary data, zero bytes included", function()
    local d = tmpdir()
    braid.run(function()
      local p = d .. "/text.txt"
      fs.write_file(p, "hello\n")
      fs.append_file(p, "world\n")
      assert.are.equal("hello\nworld\n", fs.read_file(p))
      fs.write_file(p, "over")
      assert.are.equal("over", fs.read_file(p))
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local bin = table.concat(bytes) .. "\0\0end\0"
      fs.write_file(d .. "/bin", bin)
      assert.are.equal(bin, fs.read_file(d .. "/bin"))
      fs.append_file(d .. "/new", "\0")   -- append creates the file
      assert.are.equal("\0", fs.read_file(d .. "/new"))
      fs.write_file(d .. "/empty", "")
      assert.are.equal("", fs.read_file(d .. "/empty"))
    end)
  end)

  it("round-trips a 5 MB file, read in chunks", function()
    local d = tmpdir()
    braid.run(function()
      local chunk = {}
      for i = 1, 1024 do chunk[i] = string.char(i % 251) end
      local big = string.rep(table.concat(chunk), 5 * 1024)
      assert.are.equal(5 * 1024 * 1024, #big)
      fs.write_file(d .. "/big", big)
      assert.are.equal(#big, fs.stat(d .. "/big").size)
      local back = fs.read_file(d .. "/big")
      assert.are.equal(#big, #back)
      assert.is_true(back == big)
    end)
  end)

  it("lets other tasks run while a large file is read", function()
    local d = tmpdir()
    braid.run(function()
      fs.write_file(d .. "/big", string.rep("x", 4 * 1024 * 1024))
      local ticks, reading = 0, true
      local ticker = braid.spawn(function()
        while reading do ticks = ticks + 1; braid.yield() end
      end)
      local s = fs.read_file(d .. "/big")
      reading = false
      ticker:await()
      assert.are.equal(4 * 1024 * 1024, #s)
      assert.is_true(ticks > 0)
    end)
  end)

  it("stat gives size, mtime, type and mode", function()
    local d = tmpdir()
    braid.run(function()
      local before = os.time()
      fs.write_file(d .. "/f", "12345")
      local st = fs.stat(d .. "/f")
      assert.are.equal(5, st.size)
      assert.are.equal("file", st.type)
      assert.are.equal("float", math.type(st.mtime))
      assert.is_true(math.abs(st.mtime - before) < 60)
      assert.are.equal("integer", math.type(st.mode))
      fs.mkdir(d .. "/sub", tonumber("700", 8))
      st = fs.stat(d .. "/sub")
      assert.are.equal("directory", st.type)
      assert.are.equal(tonumber("700", 8), st.mode)
      assert(os.execute("ln -s f '" .. d .. "/link'"))
      assert.are.equal("link", fs.stat(d .. "/link").type)
      assert.are.equal("other", fs.stat("/dev/null").type)
    end)
  end)

  it("list returns the names in a directory, sorted", function()
    local d = tmpdir()
    braid.run(function()
      assert.are.same({}, fs.list(d))
      for _, n in ipairs({"b", "a", "c", "B", "a.txt"}) do
        fs.write_file(d .. "/" .. n, n)
      end
      fs.mkdir(d .. "/dir")
      assert.are.same({"B", "a", "a.txt", "b", "c", "dir"}, fs.list(d))
    end)
  end)

  it("mkdir, rename and remove files and empty directories", function()
    local d = tmpdir()
    braid.run(function()
      fs.mkdir(d .. "/x")
      fs.write_file(d .. "/x/f", "data")
      fs.rename(d .. "/x/f", d .. "/g")
      assert.are.equal("data", fs.read_file(d .. "/g"))
      fs.rename(d .. "/x", d .. "/y")
      assert.are.same({"g", "y"}, fs.list(d))
      expect_io("EEXIST", d .. "/y", fs.mkdir, d .. "/y")
      fs.write_file(d .. "/y/inside", "")
      expect_io("ENOTEMPTY", d .. "/y", fs.remove, d .. "/y")
      fs.remove(d .. "/y/inside")
      fs.remove(d .. "/y")
      fs.remove(d .. "/g")
      assert.are.same({}, fs.list(d))
    end)
  end)

  it("raises kind io with code ENOENT and the path for missing files", function()
    local d = tmpdir()
    braid.run(function()
      local p = d .. "/missing"
      local e = expect_io("ENOENT", p, fs.read_file, p)
      assert.is_true(braid.is_error(e))
      expect_io("ENOENT", p, fs.stat, p)
      expect_io("ENOENT", p, fs.list, p)
      expect_io("ENOENT", p, fs.remove, p)
      expect_io("ENOENT", p, fs.rename, p, d .. "/other")
      expect_io("ENOENT", p .. "/x", fs.write_file, p .. "/x", "")
      expect_io("ENOENT", p .. "/x", fs.mkdir, p .. "/x")
      expect_io("EISDIR", d, fs.read_file, d)
      expect_io("ENOTDIR", "/dev/null", fs.list, "/dev/null")
    end)
  end)

  -- Issue 13.12: read_file had no cap (read_file("/dev/zero") took 850 MB
  -- in 3 s). It now reads at most opts.max_size bytes (64 MiB by default)
  -- and raises kind "limit" on the byte after.
  it("stops at max_size with kind limit, naming the cap, the option and the path", function()
    local d = tmpdir()
    braid.run(function()
      local function expect_limit(limit, path, opts)
        local ok, e = pcall(fs.read_file, path, opts)
        assert.is_false(ok)
        assert.are.equal("limit", e.kind)
        assert.are.equal(limit, e.limit)
        assert.are.equal("max_size", e.option)
        assert.are.equal(path, e.path)
        assert.are.equal("braid.fs.read_file " .. path .. ": file longer than " .. limit ..
                         " bytes (the max_size option raises the limit)", e.message)
      end
      expect_limit(1000000, "/dev/zero", {max_size = 1e6})
      expect_limit(64 * 1024 * 1024, "/dev/zero")   -- the default
      fs.write_file(d .. "/f", string.rep("x", 200000))
      assert.are.equal(200000, #fs.read_file(d .. "/f", {max_size = 200000}))
      expect_limit(199999, d .. "/f", {max_size = 199999})
      expect_limit(0, d .. "/f", {max_size = 0})
      fs.write_file(d .. "/empty", "")
      assert.are.equal("", fs.read_file(d .. "/empty", {max_size = 0}))
      assert.are.equal(200000, #fs.read_file(d .. "/f", {max_size = math.huge}))
      local ok, e = pcall(fs.read_file, d .. "/f", {max = 1})
      assert.are.equal("usage", e.kind)
      assert.matches("unknown option 'max'", e.message, 1, true)
      ok, e = pcall(fs.read_file, d .. "/f", {max_size = -1})
      assert.are.equal("usage", e.kind)
      assert.matches("bad option 'max_size' to 'braid.fs.read_file'", e.message, 1, true)
    end)
  end)

  it("raises usage errors for bad arguments and outside a task", function()
    braid.run(function()
      local ok, e = pcall(fs.read_file, 42)
      assert.are.equal("usage", e.kind)
      assert.matches("bad argument #1 to 'braid.fs.read_file'", e.message, 1, true)
      ok, e = pcall(fs.write_file, "/tmp/x", nil)
      assert.are.equal("usage", e.kind)
      ok, e = pcall(fs.read_file, "a\0b")
      assert.are.equal("usage", e.kind)
      ok, e = pcall(fs.mkdir, "/tmp/x", "rwx")
      assert.are.equal("usage", e.kind)
    end)
    local ok, e = pcall(fs.read_file, "/dev/null")
    assert.are.equal("usage", e.kind)
    assert.matches("not inside a braid task", e.message)
  end)

  it("cancelling a task in the middle of reading a large file leaves nothing open", function()
    local d = tmpdir()
    local p = d .. "/big"
    local size = 8 * 1024 * 1024
    braid.run(function() fs.write_file(p, string.rep("y", size)) end)
    local fds = open_fds()
    local cancelled, finished = 0, 0
    braid.run(function()
      -- Time one whole read, then cancel others at fractions of that time,
      -- so that the cancels land on the open, on the reads and on the close.
      local t0 = braid.now()
      fs.read_file(p)
      local whole = braid.now() - t0
      for k = 0, 40 do
        local t = braid.spawn(fs.read_file, p)
        if k == 0 then braid.yield() else braid.sleep(whole * k / 32) end
        t:cancel("stop")
        local ok, r = pcall(t.await, t)
        if ok then
          assert.are.equal(size, #r)
          finished = finished + 1
        else
          assert.is_true(braid.is_cancelled(r))
          cancelled = cancelled + 1
        end
      end
    end)
    assert.is_true(cancelled > 0)
    assert.are.equal(fds, open_fds())
  end)

  it("cancels writes and deadlines the same way, closing the descriptor", function()
    local d = tmpdir()
    local fds = open_fds()
    braid.run(function()
      local data = string.rep("z", 8 * 1024 * 1024)
      local t0 = braid.now()
      fs.write_file(d .. "/whole", data)
      local whole = braid.now() - t0
      for k = 0, 20 do
        local t = braid.spawn(fs.write_file, d .. "/w" .. k, data)
        if k == 0 then braid.yield() else braid.sleep(whole * k / 16) end
        t:cancel()
        pcall(t.await, t)
      end
      local ok, e = pcall(braid.timeout, 0, fs.read_file, d .. "/w0")
      assert.is_true(braid.is_timeout(e))
    end)
    assert.are.equal(fds, open_fds())
  end)

  it("closes the FIFO a cancelled read_file waited on for a writer", function()
    local d = tmpdir()
    local fifo = d .. "/fifo"
    assert(os.execute("mkfifo '" .. fifo .. "'"))
    local fds = open_fds()
    braid.run(function()
      local t = braid.spawn(fs.read_file, fifo)   -- waits for a writer
      braid.sleep(0.05)
      t:cancel()
      local ok, e = pcall(t.await, t)
      assert.is_true(braid.is_cancelled(e))
      -- it waited on the loop (no open(2) left blocking on the pool):
      -- braid.run returns once the descriptor is closed
    end)
    assert.are.equal(fds, open_fds())
  end)

  it("frees every cancelled request: the leak-checking runner exits cleanly", function()
    local d = tmpdir()
    local script = h.script([[
      local fs, d = braid.fs, ...
      fs.write_file(d .. "/big", string.rep("r", 4 * 1024 * 1024))
      local calls = {
        function() return fs.read_file(d .. "/big") end,
        function() return fs.write_file(d .. "/w", string.rep("w", 4 * 1024 * 1024)) end,
        function() return fs.stat(d .. "/big") end,
        function() return fs.list(d) end,
        function() return pcall(fs.read_file, d .. "/missing") end,
      }
      for _, call in ipairs(calls) do
        for k = 0, 8 do
          local t = braid.spawn(call)
          if k == 0 then braid.yield() else braid.sleep(k / 1000) end
          t:cancel()
          pcall(t.await, t)
        end
      end
      print("done")
    ]])
    finally(function() os.remove(script) end)
    local out, err, code = h.braid(script .. " " .. d)
    assert.are.equal("", err)
    assert.are.equal("done\n", out)
    assert.are.equal(0, code)
  end)

  -- Regression (review of fs and FIFOs): read_file, write_file, copy and
  -- fs.open to write blocked a pool thread in open(2) on a FIFO without its
  -- other end; cancelling could not free it, and braid never exited after
  -- the script had ended (an embedder's braid_run hung the same way).
  it("waits for a FIFO's other end on the loop: cancelled, braid exits", function()
    local d = tmpdir()
    assert(os.execute("mkfifo '" .. d .. "/fifo'"))
    local script = h.script([[
      local fs, d = braid.fs, ...
      local fifo = d .. "/fifo"
      fs.write_file(d .. "/f", "x")
      local calls = {
        function() return fs.read_file(fifo) end,
        function() return fs.write_file(fifo, "x") end,
        function() return fs.append_file(fifo, "x") end,
        function() return fs.open(fifo, "w") end,
        function() return fs.open(fifo, "a") end,
        function() return fs.lines(fifo)() end,
        function() return fs.copy(fifo, d .. "/x") end,
        function() return fs.copy(d .. "/f", fifo) end,
      }
      for _, call in ipairs(calls) do
        local ok, e = pcall(braid.timeout, 0.1, call)
        io.write(braid.is_timeout(e) and "timeout" or tostring(e.code), " ")
      end
      print("end of script")
    ]])
    finally(function() os.remove(script) end)
    local t0 = os.time()
    local out, err, code = h.sh("timeout -s KILL 20 env " ..
                                (os.getenv("BRAID_RUN_ENV") or "") .. " " ..
                                os.getenv("BRAID_BIN") .. " " .. script ..
                                " " .. d .. " </dev/null")
    assert.are.equal("timeout timeout timeout timeout timeout timeout " ..
                     "EINVAL EINVAL end of script\n", out)
    assert.are.equal("", err)
    assert.are.equal(0, code)
    assert.is_true(os.time() - t0 < 10)
  end)

  it("reads and writes a FIFO whole, whichever end opens first", h.run(function()
    local d <close> = fs.tmpdir()
    local fifo = d .. "/fifo"
    assert.are.equal(0, braid.exec({"mkfifo", fifo}).code)
    local s = string.rep("fifo", 800000)   -- 3.2 MB: more than a pipe holds
    local w = braid.spawn(fs.write_file, fifo, s)
    assert.are.equal(s, fs.read_file(fifo))
    w:await()
    local r = braid.spawn(fs.read_file, fifo)
    braid.sleep(0.05)                      -- the reader waits first
    fs.append_file(fifo, "tail")
    assert.are.equal("tail", r:await())
    w = braid.spawn(pcall, fs.write_file, fifo, s)
    local ok, e = pcall(fs.read_file, fifo, {max_size = 1000})
    assert.are.equal("limit", e.kind)
    local ok2, e2 = w:await()              -- the reader went: EPIPE
    assert.is_false(ok2)
    assert.are.equal("EPIPE", e2.code)
  end))

  it("raises the cancellation at once in an already cancelled task", h.run(function()
    local t = braid.spawn(function()
      braid.current():cancel("early")
      return fs.stat("/")
    end)
    local ok, e = pcall(t.await, t)
    assert.is_true(braid.is_cancelled(e))
  end))
end)
