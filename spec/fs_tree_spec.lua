-- spec/fs_tree_spec.lua (issue 19): braid.fs.exists, mkdir with parents,
-- remove with recursive, copy, chmod, realpath, walk and tmpdir.
local braid = require "braid"
local h = require "helper"
local fs = braid.fs

describe("braid.fs.tmpdir", function()
  it("makes a private directory removed with everything when closed",
     h.run(function()
    local path
    do
      local d <close> = fs.tmpdir("spec-")
      path = d.path
      assert.matches("/spec%-[^/]+$", path)
      assert.are.equal(path, tostring(d))
      assert.are.equal("directory", fs.stat(path).type)
      assert.are.equal(448, fs.stat(path).mode)   -- 0700
      fs.mkdir(d .. "/sub")
      fs.write_file(d .. "/sub/f", "x")
    end
    assert.is_false(fs.exists(path))
  end))

  it("is removed also when its task is cancelled", h.run(function()
    local path, started = nil, braid.event()
    local t = braid.spawn(function()
      local d <close> = fs.tmpdir()
      path = d.path
      fs.write_file(d .. "/f", "x")
      started:set()
      braid.sleep(100)
    end)
    started:wait()
    t:cancel()
    pcall(t.await, t)
    assert.is_false(fs.exists(path))
  end))

  -- Inside a guard of its own, with a canary beside the victim.
  it("removes the directory it made, not what guard.path says",
     h.run(function()
    local base <close> = fs.tmpdir("spec-")
    fs.write_file(base .. "/canary", "alive")
    local v = base .. "/victim"
    fs.mkdir(v .. "/sub", {parents = true})
    fs.write_file(v .. "/precious", "p")
    local g = fs.tmpdir("spec-")
    local real = g.path
    g.path = v .. "/sub/.."
    g:close()
    assert.is_false(fs.exists(real))
    assert.are.equal("p", fs.read_file(v .. "/precious"))
    assert.are.equal("directory", fs.stat(v .. "/sub").type)
    g:close()                                  -- twice: nothing
    local gone = fs.tmpdir("spec-")            -- removed before its close
    fs.remove(gone.path)
    gone:close()
    assert.are.equal("alive", fs.read_file(base .. "/canary"))
  end))

  -- Regression (review of the network and file primitives): a close that
  -- could not remove the tree forgot it, so a later close did nothing and
  -- the directory stayed. An immutable file (chattr +i) stops even root;
  -- where chattr cannot, there is nothing to see.
  it("tries again on the next close when a close could not remove it",
     h.run(function()
    local g = fs.tmpdir()
    fs.write_file(g .. "/f", "")
    local ok, r = pcall(braid.exec, {"chattr", "+i", g .. "/f"},
                        {stderr = "null"})
    if not ok or r.code ~= 0 then
      g:close()
      return
    end
    local closed, e = pcall(g.close, g)
    braid.exec({"chattr", "-i", g .. "/f"}, {check = true})
    assert.is_false(closed)
    assert.are.equal("io", e.kind)
    assert.is_true(fs.exists(g.path))
    g:close()
    assert.is_false(fs.exists(g.path))
  end))
end)

describe("braid.fs tree calls", function()
  it("exists tells what is there, links included", h.run(function()
    local d <close> = fs.tmpdir()
    assert.is_true(fs.exists(d.path))
    assert.is_false(fs.exists(d .. "/none"))
    assert.is_false(fs.exists(d .. "/none/deeper"))
  end))

  it("mkdir with parents makes the missing ones and accepts an existing one",
     h.run(function()
    local d <close> = fs.tmpdir()
    fs.mkdir(d .. "/a/b/c", {parents = true})
    assert.are.equal("directory", fs.stat(d .. "/a/b/c").type)
    fs.mkdir(d .. "/a/b/c", {parents = true})
    local ok, e = pcall(fs.mkdir, d .. "/a/b/c")
    assert.are.equal("EEXIST", e.code)
    fs.write_file(d .. "/file", "")
    ok, e = pcall(fs.mkdir, d .. "/file", {parents = true})
    assert.are.equal("EEXIST", e.code)
    ok, e = pcall(fs.mkdir, d .. "/x", {bogus = true})
    assert.are.equal("usage", e.kind)
  end))

  -- the parents got opts.mode too: a mode without write permission
  -- stopped the next level (for anyone but root), as mkdir -p -m does not
  it("mkdir with parents gives opts.mode to the last directory only", h.run(function()
    local d <close> = fs.tmpdir()
    fs.mkdir(d .. "/a", {mode = tonumber("755", 8)})
    local default = fs.stat(d .. "/a").mode
    fs.mkdir(d .. "/p/q/r", {parents = true, mode = tonumber("500", 8)})
    assert.are.equal(tonumber("500", 8), fs.stat(d .. "/p/q/r").mode & tonumber("777", 8))
    assert.are.equal(default, fs.stat(d .. "/p").mode)
    assert.are.equal(default, fs.stat(d .. "/p/q").mode)
  end))

  -- the Lua-side functions read opts through __index and __pairs, where
  -- every C function refuses such a table
  it("refuses an options table with a metatable, as the C functions do", h.run(function()
    local d <close> = fs.tmpdir()
    fs.mkdir(d .. "/p")
    fs.write_file(d .. "/p/f", "x")
    local sneaky = setmetatable({}, {__index = function() return true end})
    for _, call in ipairs({
      function() return fs.remove(d .. "/p", sneaky) end,
      function() return fs.mkdir(d .. "/q/r", sneaky) end,
      function() return fs.walk(d, sneaky) end,
    }) do
      local ok, e = pcall(call)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      assert.matches("options table expected: a plain table without a metatable, got a table with a metatable", e.message, 1, true)
    end
    assert.are.equal("x", fs.read_file(d .. "/p/f"))
  end))

  -- a step suspends (list, stat): a second task stepping the same walk
  -- popped the first one's directory, and 49 of 102 entries were lost
  it("refuses a second task stepping a walk another task is in", h.run(function()
    local d <close> = fs.tmpdir()
    for _, sub in ipairs({"a", "b"}) do
      fs.mkdir(d .. "/" .. sub)
      for i = 1, 20 do fs.write_file(d .. "/" .. sub .. "/f" .. i, "") end
    end
    local it = fs.walk(d.path)
    local function run()
      local n = 0
      while it() do n = n + 1 end
      return n
    end
    local ok, e = pcall(braid.gather, run, run)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("braid.fs.walk: another task is stepping this walk", e.message, 1, true)
    local n = 0
    for _ in fs.walk(d.path) do n = n + 1 end
    assert.are.equal(42, n)
    -- a step that raised left the walk "busy" for good, and then lost the
    -- entry it was on with everything under it
    local again = fs.walk(d.path)
    assert.is_false(braid.move_on(0, again))
    n = 0
    for _ in again do n = n + 1 end
    assert.are.equal(42, n)
  end))

  it("remove with recursive removes a tree, not what its links point to",
     h.run(function()
    local d <close> = fs.tmpdir()
    local keep <close> = fs.tmpdir()
    fs.write_file(keep .. "/precious", "p")
    fs.mkdir(d .. "/t/u", {parents = true})
    fs.write_file(d .. "/t/u/f", "x")
    assert.are.equal(0, braid.exec({"ln", "-s", keep.path, d .. "/t/link"}).code)
    local ok, e = pcall(fs.remove, d .. "/t")
    assert.are.equal("io", e.kind)
    fs.remove(d .. "/t", {recursive = true})
    assert.is_false(fs.exists(d .. "/t"))
    assert.are.equal("p", fs.read_file(keep .. "/precious"))
  end))

  it("remove refuses the root and the empty path", h.run(function()
    for _, p in ipairs({"/", "//", "", "/tmp/.."}) do
      local ok, e = pcall(fs.remove, p, {recursive = true})
      assert.are.equal("usage", e.kind)
      assert.matches("refusing", e.message)
    end
  end))

  it("copy copies contents and mode; chmod and realpath", h.run(function()
    local d <close> = fs.tmpdir()
    fs.write_file(d .. "/a", "contents")
    fs.chmod(d .. "/a", 416)   -- 0640
    fs.copy(d .. "/a", d .. "/b")
    assert.are.equal("contents", fs.read_file(d .. "/b"))
    assert.are.equal(416, fs.stat(d .. "/b").mode)
    fs.mkdir(d .. "/s")
    assert.are.equal(fs.realpath(d.path) .. "/b",
                     fs.realpath(d .. "/./s/../b"))
    local ok, e = pcall(fs.copy, d .. "/none", d .. "/c")
    assert.are.equal("ENOENT", e.code)
    assert.are.equal(d .. "/none", e.path)
    ok, e = pcall(fs.realpath, d .. "/none")
    assert.are.equal("ENOENT", e.code)
    ok, e = pcall(fs.chmod, d .. "/a", 99999)
    assert.are.equal("usage", e.kind)
  end))

  -- Regression (review of the network and file primitives): copy wrote
  -- every zero of a sparse file, so a 1 GiB file of 0 blocks took 1 GiB
  -- of disk (and 5 s) where cp keeps the holes.
  it("copy keeps a sparse file's holes, contents the same", h.run(function()
    local d <close> = fs.tmpdir()
    local function blocks(p)
      return tonumber(braid.exec({"stat", "-c", "%b", p}, {check = true}).stdout)
    end
    for _, tail in ipairs({"hole", "data"}) do
      local a, b = d .. "/" .. tail, d .. "/" .. tail .. ".copy"
      do
        local f <close> = fs.open(a, "w")
        f:seek("set", 1 << 20)
        f:write("x")
        if tail == "data" then f:seek("set", (32 << 20) - 1) f:write("y") end
      end
      if tail == "hole" then
        braid.exec({"truncate", "-s", "32M", a}, {check = true})
      end
      fs.copy(a, b)
      assert.are.equal(32 << 20, fs.stat(b).size)
      assert.is_true(fs.read_file(a) == fs.read_file(b), tail)
      assert.is_true(blocks(b) <= blocks(a) + 1024,
                     tail .. ": " .. blocks(b) .. " blocks for " .. blocks(a))
    end
  end))

  it("walk lists a tree depth first, not following links", h.run(function()
    local d <close> = fs.tmpdir()
    fs.mkdir(d .. "/a/b", {parents = true})
    fs.write_file(d .. "/a/b/f", "")
    fs.write_file(d .. "/a/g", "")
    fs.write_file(d .. "/z", "")
    assert.are.equal(0, braid.exec({"ln", "-s", d .. "/a", d .. "/l"}).code)
    local seen = {}
    for p, t in fs.walk(d.path) do
      seen[#seen + 1] = p:sub(#d.path + 2) .. ":" .. t
    end
    assert.are.same({"a:directory", "a/b:directory", "a/b/f:file",
                     "a/g:file", "l:link", "z:file"}, seen)
    seen = {}
    for p, t in fs.walk(d.path, {follow = true}) do
      seen[#seen + 1] = p:sub(#d.path + 2) .. ":" .. t
    end
    -- the link leads to a directory walked already: listed, not entered
    assert.are.same({"a:directory", "a/b:directory", "a/b/f:file",
                     "a/g:file", "l:directory", "z:file"}, seen)
  end))

  it("walk skips what vanishes while it runs", h.run(function()
    local d <close> = fs.tmpdir()
    fs.write_file(d .. "/a", "")
    fs.write_file(d .. "/b", "")
    fs.mkdir(d .. "/c/sub", {parents = true})
    fs.write_file(d .. "/z", "")
    local seen = {}
    for p in fs.walk(d.path) do
      seen[#seen + 1] = p:sub(#d.path + 2)
      if #seen == 1 then                  -- listed already, not looked at
        fs.remove(d .. "/b")
        fs.remove(d .. "/c", {recursive = true})
      end
    end
    assert.are.same({"a", "z"}, seen)
  end))

  it("names its own call in io errors", h.run(function()
    local d <close> = fs.tmpdir()
    assert.are.equal(0, braid.exec({"ln", "-s", "loop", d .. "/loop"}).code)
    fs.write_file(d .. "/f", "")
    local function raises(name, code, path, fn, ...)
      local ok, e = pcall(fn, ...)
      assert.is_false(ok, name)
      assert.are.same({"io", code, path}, {e.kind, e.code, e.path})
      assert.are.equal(name .. " " .. path, e.message:sub(1, #name + #path + 1))
    end
    raises("braid.fs.exists", "ELOOP", d .. "/loop/x", fs.exists,
           d .. "/loop/x")
    raises("braid.fs.remove", "ELOOP", d .. "/loop/x", fs.remove,
           d .. "/loop/x", {recursive = true})
    raises("braid.fs.remove", "ENOTDIR", d .. "/f/", fs.remove, d .. "/f/",
           {recursive = true})
    raises("braid.fs.walk", "ENOENT", d .. "/none", fs.walk, d .. "/none")
    raises("braid.fs.lines", "ENOENT", d .. "/none", fs.lines, d .. "/none")
    local ok, e = pcall(fs.lines, d .. "/f\0x")
    assert.are.equal("usage", e.kind)
    assert.matches("'braid.fs.lines' %(path contains a zero byte%)", e.message)
  end))

  it("walk is cancellable and bounded by deadlines", h.run(function()
    local d <close> = fs.tmpdir()
    for i = 1, 50 do fs.write_file(d .. "/f" .. i, "") end
    local n = 0
    local ok = braid.move_on(0, function()
      for _ in fs.walk(d.path) do n = n + 1 end
    end)
    assert.is_false(ok)
    assert.is_true(n < 50)
  end))
end)

describe("braid.fs.copy", function()
  -- Regression (review of fs.copy): uv_fs_copyfile, one request nobody can
  -- stop, went on after a cancel and overwrote what the script wrote to
  -- `to` since; braid.run (and the exit) waited for all of it.
  it("cancelled, stops: nothing reaches `to` after it returned",
     function()
    local d = h.tmp()
    assert(os.execute("mkdir '" .. d .. "'"))
    finally(function() os.execute("rm -rf '" .. d .. "'") end)
    local big, out = d .. "/big", d .. "/out"
    -- allocated, not sparse: a sparse file's holes are skipped at once
    assert(os.execute("fallocate -l 2G '" .. big .. "'"))
    local t0 = os.time()
    braid.run(function()
      local started = braid.now()
      local ok, e = pcall(braid.timeout, 0.1, fs.copy, big, out)
      assert.is_true(braid.is_timeout(e))
      assert.is_true(braid.now() - started < 2)
      fs.write_file(out, "hello\n")
      braid.sleep(0.3)
      assert.are.equal(6, fs.stat(out).size)
    end)
    assert.is_true(os.time() - t0 < 5)   -- braid.run did not wait for a copy
    assert.are.equal("hello\n", h.slurp(out))
  end)

  -- Regression: copyfile copies st_size bytes, none of a /proc file's.
  it("copies a file to its end, whatever its size says (/proc)",
     h.run(function()
    local d <close> = fs.tmpdir()
    fs.copy("/proc/version", d .. "/v")
    local v = fs.read_file(d .. "/v")
    assert.matches("^Linux", v)
    assert.are.equal(fs.read_file("/proc/version"), v)
    -- and a large one, across chunks
    local s = string.rep("0123456789abcdef", 200000)   -- 3.2 MB
    fs.write_file(d .. "/a", s)
    fs.copy(d .. "/a", d .. "/b")
    assert.are.equal(s, fs.read_file(d .. "/b"))
    fs.copy(d .. "/b", d .. "/b")                      -- itself: unchanged
    assert.are.equal(s, fs.read_file(d .. "/b"))
  end))

  it("refuses devices, FIFOs and directories as source, a FIFO as target",
     h.run(function()
    local d <close> = fs.tmpdir()
    local fifo = d .. "/fifo"
    assert.are.equal(0, braid.exec({"mkfifo", fifo}).code)
    fs.write_file(d .. "/f", "x")
    for _, c in ipairs({{"/dev/zero", d .. "/z", "/dev/zero", "EINVAL"},
                        {fifo, d .. "/x", fifo, "EINVAL"},
                        {d .. "/f", fifo, fifo, "EINVAL"},
                        {d.path, d .. "/y", d.path, "EISDIR"}}) do
      local ok, e = pcall(braid.timeout, 5, fs.copy, c[1], c[2])
      assert.is_false(ok)
      assert.are.equal("io", e.kind, tostring(e))
      assert.are.equal(c[4], e.code)
      assert.are.equal(c[3], e.path)
      assert.matches("^braid%.fs%.copy ", e.message)
    end
    assert.is_false(fs.exists(d .. "/z"))
    fs.copy(d .. "/f", "/dev/null")                    -- a device as target
  end))

  -- each copy's buffer is charged from its start: with 1 MiB chunks, 40
  -- small copies at once passed a 16 MB limit
  it("copies 40 small files at once in a worker held to 16 MB", h.run(function()
    local d <close> = fs.tmpdir()
    fs.write_file(d .. "/f", "tiny")
    local w <close> = braid.worker([[
      local braid = require "braid"
      return {run = function(dir)
        local fns = {}
        for i = 1, 40 do
          fns[i] = function() braid.fs.copy(dir .. "/f", dir .. "/c" .. i) end
        end
        braid.gather(table.unpack(fns))
        return true
      end}
    ]], {memory_limit = 16e6})
    assert.is_true(w:call("run", d.path))
    assert.are.equal("tiny", fs.read_file(d .. "/c40"))
  end))

  -- the refusal came after open(2), which released the process waiting at
  -- the FIFO's other end: a writer's line went into a pipe closed at once
  it("refuses a FIFO without opening it: whoever waits at its other end still waits",
     h.run(function()
    local d <close> = fs.tmpdir()
    local fifo = d .. "/fifo"
    assert.are.equal(0, braid.exec({"mkfifo", fifo}).code)
    fs.write_file(d .. "/f", "x")
    for _, c in ipairs({{"echo hello > " .. fifo .. "; echo wrote", fifo, d .. "/x"},
                        {"cat " .. fifo .. "; echo read", d .. "/f", fifo}}) do
      local p <close> = braid.process({"sh", "-c", c[1]})
      braid.sleep(0.2)   -- it waits in open(2) at its end
      local ok, e = pcall(fs.copy, c[2], c[3])
      assert.are.equal("EINVAL", e.code)
      assert.is_false(braid.move_on(0.5, p.read_line, p))
    end
  end))
end)
