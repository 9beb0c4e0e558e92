-- spec/fs_watch_spec.lua (issue 19): braid.fs.watch.
local braid = require "braid"
local h = require "helper"
local fs = braid.fs

-- Everything the watcher reports within secs, as "name:event" strings.
local function drain(w, root, secs)
  local got = {}
  braid.move_on(secs, function()
    for ev in w do got[#got + 1] = ev.path:sub(#root + 2) .. ":" .. ev.event end
  end)
  return got
end

local function has(list, item)
  for _, v in ipairs(list) do if v == item then return true end end
  return false
end

describe("braid.fs.watch", function()
  it("reports changes in a directory as {path, event}", h.run(function()
    local d <close> = fs.tmpdir()
    local w <close> = fs.watch(d.path)
    fs.write_file(d .. "/a", "1")
    local ev = w:next()
    assert.are.equal(d .. "/a", ev.path)
    assert.is_true(ev.event == "rename" or ev.event == "change")
    fs.rename(d .. "/a", d .. "/b")
    local got = drain(w, d.path, 0.3)
    assert.is_true(has(got, "a:rename"), table.concat(got, " "))
    assert.is_true(has(got, "b:rename"), table.concat(got, " "))
  end))

  it("reports changes to a file with the file's path", h.run(function()
    local d <close> = fs.tmpdir()
    local f = d .. "/f"
    fs.write_file(f, "x")
    local w <close> = fs.watch(f)
    fs.append_file(f, "y")
    local ev = w:next()
    assert.are.same({path = f, event = "change"}, ev)
  end))

  it("keeps changes made while nobody waits, merging equal ones",
     h.run(function()
    local d <close> = fs.tmpdir()
    local w <close> = fs.watch(d.path)
    for i = 1, 20 do fs.append_file(d .. "/log", tostring(i)) end
    braid.sleep(0.05)
    local got = drain(w, d.path, 0.2)
    assert.is_true(has(got, "log:change"), table.concat(got, " "))
    assert.is_true(#got <= 3, table.concat(got, " "))   -- merged, not 20
  end))

  it("debounces: delivers once the path has been quiet", h.run(function()
    local d <close> = fs.tmpdir()
    local w <close> = fs.watch(d.path, {debounce = 0.2})
    local t0 = braid.now()
    braid.spawn(function()
      for i = 1, 4 do fs.write_file(d .. "/b", tostring(i)) braid.sleep(0.05) end
    end)
    local ev = w:next()
    assert.are.equal(d .. "/b", ev.path)
    assert.is_true(braid.now() - t0 >= 0.35)   -- the last write + 0.2 s
  end))

  it("is cancellable, and ends (nil) when closed", h.run(function()
    local d <close> = fs.tmpdir()
    local w = fs.watch(d.path)
    local ok, e = pcall(braid.timeout, 0.05, w.next, w)
    assert.is_true(braid.is_timeout(e))
    local t = braid.spawn(function() return w:next() end)
    braid.yield()
    w:close()
    assert.is_nil(t:await())
    assert.is_nil(w:next())
    w:close()
  end))

  it("is closed with the scope that made it", h.run(function()
    local d <close> = fs.tmpdir()
    local w
    braid.scope(function() w = fs.watch(d.path) end)
    assert.is_nil(w:next())
    assert.matches("closed", tostring(w))
  end))

  it("raises kind io for a path that is not there", h.run(function()
    local ok, e = pcall(fs.watch, "/nonexistent/dir")
    assert.are.equal("io", e.kind)
    assert.are.equal("ENOENT", e.code)
    assert.are.equal("/nonexistent/dir", e.path)
    ok, e = pcall(fs.watch, "/tmp", {debounce = -1 / 0 * 0})
    assert.are.equal("usage", e.kind)
  end))

  it("lets one task wait at a time", h.run(function()
    local d <close> = fs.tmpdir()
    local w <close> = fs.watch(d.path)
    local t = braid.spawn(w.next, w)
    braid.yield()
    local ok, e = pcall(w.next, w)
    assert.matches("another task waits", e.message)
    t:cancel()
    pcall(t.await, t)
  end))
end)

describe("braid.fs.watch of a path that goes", function()
  -- Regression (review of fs.watch): once the watched file was removed,
  -- next() waited forever (the kernel had dropped the watch), with no
  -- deadlock report.
  it("ends (next() returns nil) once the path is removed", h.run(function()
    local d <close> = fs.tmpdir()
    local f = d .. "/f"
    fs.write_file(f, "x")
    local w <close> = fs.watch(f)
    fs.remove(f)
    local got = {}
    braid.timeout(5, function()
      for ev in w do got[#got + 1] = ev.event end
    end)
    assert.is_true(has(got, "rename"), table.concat(got, " "))
    assert.is_nil(w:next())
  end))

  -- removing the last name of a file another link (or an open descriptor)
  -- keeps is only IN_ATTRIB, a "change": the watch went on waiting
  it("ends once the path is removed while another hard link keeps the file", h.run(function()
    local d <close> = fs.tmpdir()
    local f = d .. "/f"
    fs.write_file(f, "x")
    assert.are.equal(0, braid.exec({"ln", f, d .. "/g"}).code)
    local w <close> = fs.watch(f)
    fs.remove(f)
    local got = {}
    braid.timeout(5, function()
      for ev in w do got[#got + 1] = ev.event end
    end)
    assert.are.equal("rename", got[#got], table.concat(got, " "))
    assert.is_nil(w:next())
  end))

  it("ends for a task waiting when the path is moved away or replaced",
     h.run(function()
    local d <close> = fs.tmpdir()
    for _, how in ipairs({"move", "replace", "directory"}) do
      local p = d .. "/" .. how
      if how == "directory" then fs.mkdir(p) else fs.write_file(p, "x") end
      local w <close> = fs.watch(p, {debounce = 0.05})
      local t = braid.spawn(function()
        local n = 0
        for _ in w do n = n + 1 end
        return n
      end)
      braid.yield()
      if how == "move" then fs.rename(p, p .. ".old")
      elseif how == "replace" then
        fs.write_file(p .. ".new", "y")
        fs.rename(p .. ".new", p)
      else fs.remove(p) end
      local n = braid.timeout(5, t.await, t)
      assert.is_true(n >= 1, how)
    end
  end))

  -- Regression (review of the network and file primitives): libuv names a
  -- watched directory's own event after its last component, and the
  -- watcher reported a removed or moved directory d as "d/d", an entry
  -- that never was.
  it("reports a directory that went as its own path", h.run(function()
    local d <close> = fs.tmpdir()
    for _, how in ipairs({"remove", "move"}) do
      local p = d .. "/" .. how
      fs.mkdir(p)
      local w <close> = fs.watch(p)
      if how == "remove" then fs.remove(p) else fs.rename(p, p .. ".old") end
      local got = {}
      braid.timeout(5, function()
        for ev in w do got[#got + 1] = ev.path .. ":" .. ev.event end
      end)
      assert.are.equal(p .. ":rename", got[#got], table.concat(got, " "))
      for _, g in ipairs(got) do
        assert.are_not.equal(p .. "/" .. how .. ":rename", g)
      end
    end
  end))

  it("goes on while the path is still there (an entry of the same name)",
     h.run(function()
    local d <close> = fs.tmpdir()
    fs.mkdir(d .. "/x")
    local w <close> = fs.watch(d .. "/x")
    fs.write_file(d .. "/x/x", "1")                    -- named as the dir
    fs.rename(d .. "/x/x", d .. "/x/y")
    local got = drain(w, d .. "/x", 0.2)
    assert.is_true(has(got, "x:rename"), table.concat(got, " "))
    fs.write_file(d .. "/x/z", "1")
    assert.are.equal(d .. "/x/z", w:next().path)
  end))
end)
