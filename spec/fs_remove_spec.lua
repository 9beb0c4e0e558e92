-- spec/fs_remove_spec.lua: braid.fs.remove removes only what it was named.
-- "x/..", ".", "link/.." emptied the parent (or the working directory, or
-- wherever the link led) and "link/" the directory behind the link.
--
-- Safety of this file itself: everything happens in `sandbox` inside a
-- fresh braid.fs.tmpdir `base`; a canary in `base`, beside the sandbox and
-- outside every path named here, must survive every test; every link made
-- here points inside `base`. Even a remove that walked one level too far
-- (the bug) stays inside `base`.
local braid = require "braid"
local h = require "helper"
local fs = braid.fs

-- An `it` body: fn(sandbox, base) in a fresh sandbox; the canary checked
-- after it.
local function sandboxed(fn)
  return h.run(function()
    local base <close> = fs.tmpdir("fsremove-")
    assert.matches("/fsremove%-[^/]+$", base.path)
    fs.write_file(base .. "/canary", "alive")
    local sandbox = base .. "/sandbox"
    fs.mkdir(sandbox)
    fn(sandbox, base.path)
    assert.are.equal("alive", fs.read_file(base .. "/canary"))
  end)
end

-- A link at `at` to `to`, which must be inside base.
local function link(base, to, at)
  assert(to:sub(1, #base + 1) == base .. "/", "a link leaving the sandbox")
  assert.are.equal(0, braid.exec({"ln", "-s", to, at}).code)
end

-- sandbox/victim with files that must survive.
local function victim(sandbox)
  local v = sandbox .. "/victim"
  fs.mkdir(v .. "/sub", {parents = true})
  fs.mkdir(v .. "/other")
  fs.write_file(v .. "/precious", "p")
  fs.write_file(v .. "/other/data", "d")
  return v
end

local function intact(v)
  assert.are.equal("p", fs.read_file(v .. "/precious"))
  assert.are.equal("d", fs.read_file(v .. "/other/data"))
  assert.are.equal("directory", fs.stat(v .. "/sub").type)
end

local function refused(path, opts, what)
  local ok, e = pcall(fs.remove, path, opts)
  assert.is_false(ok, path .. " was removed")
  assert.is_true(braid.is_error(e), tostring(e))
  assert.are.equal("usage", e.kind, e.message)
  assert.is_truthy(e.message:find("braid.fs.remove: refusing to remove " .. what,
                                  1, true), e.message)
end

describe("braid.fs.remove", function()
  it("refuses a path whose last part is '.' or '..'", sandboxed(function(sb)
    local v = victim(sb)
    for _, p in ipairs{"/sub/..", "/sub/../", "/sub/..//", "/sub/.", "/sub/./",
                       "/other/.", "/.."} do
      refused(v .. p, {recursive = true}, "'.' or '..'")
      intact(v)
    end
    refused(v .. "/sub/..", nil, "'.' or '..'")   -- rm refuses it too
    refused(v .. "/sub/.", {}, "'.' or '..'")
    intact(v)
  end))

  it("refuses 'link/..': the link's parent is not what was named",
     sandboxed(function(sb, base)
    local v = victim(sb)
    fs.mkdir(sb .. "/a/b", {parents = true})
    link(base, v .. "/sub", sb .. "/a/b/up")   -- a/b/up/.. is victim
    refused(sb .. "/a/b/up/..", {recursive = true}, "'.' or '..'")
    refused(sb .. "/a/b/up/.", {recursive = true}, "'.' or '..'")
    intact(v)
    assert.are.equal("link", fs.stat(sb .. "/a/b/up").type)
  end))

  it("refuses '.' and '..' of the working directory", sandboxed(function(sb)
    local v = victim(sb)
    local work = v .. "/sub"
    fs.write_file(work .. "/mine", "m")
    local code = "for _, p in ipairs{'.', './', '..', '../'} do "
      .. "local ok, e = pcall(function() braid.fs.remove(p, {recursive = true}) end) "
      .. "print(ok, braid.is_error(e) and e.kind, e) end"
    local out, err, status = h.sh("cd '" .. work .. "' && " ..
      (os.getenv("BRAID_RUN_ENV") or "") .. " " .. os.getenv("BRAID_BIN") ..
      " -e \"" .. code .. "\" </dev/null")
    assert.are.equal(0, status, err)
    local n = 0
    for line in out:gmatch("[^\n]+") do
      n = n + 1
      assert.matches("^false\tusage\t%(command line%):1: braid%.fs%.remove: "
                     .. "refusing to remove '%.' or '%.%.'", line)
    end
    assert.are.equal(4, n, out)
    assert.are.equal("m", fs.read_file(work .. "/mine"))
    intact(v)
  end))

  it("removes the links in a tree as links, never entering them",
     sandboxed(function(sb, base)
    local v = victim(sb)
    local t = sb .. "/t"
    fs.mkdir(t .. "/d", {parents = true})
    fs.write_file(t .. "/d/f", "x")
    link(base, sb, t .. "/up")                  -- an ancestor of the tree
    link(base, v, t .. "/d/out")                -- a directory beside it
    link(base, v .. "/precious", t .. "/file")  -- a file beside it
    link(base, sb .. "/none", t .. "/dangling")
    fs.remove(t, {recursive = true})
    assert.is_false(fs.exists(t))
    intact(v)
    assert.are.same({"victim"}, fs.list(sb))
  end))

  it("refuses 'link/' (the directory behind it); 'link' removes the link",
     sandboxed(function(sb, base)
    local v = victim(sb)
    link(base, v, sb .. "/l")
    refused(sb .. "/l/", {recursive = true}, "the directory behind the link")
    refused(sb .. "/l//", {recursive = true}, "the directory behind the link")
    intact(v)
    fs.remove(sb .. "/l", {recursive = true})
    assert.is_false(fs.exists(sb .. "/l"))
    intact(v)
    fs.remove(v .. "/", {recursive = true})      -- a directory's own '/'
    assert.is_false(fs.exists(v))
  end))

  it("raises ENOTDIR for 'file/' (also a link to a file) and ENOENT for "
     .. "'dangling/', removing nothing", sandboxed(function(sb, base)
    local v = victim(sb)
    link(base, v .. "/precious", sb .. "/lf")
    link(base, sb .. "/none", sb .. "/dangling")
    for _, c in ipairs{{v .. "/precious/", "ENOTDIR"},
                       {v .. "/precious//", "ENOTDIR"},
                       {sb .. "/lf/", "ENOTDIR"},
                       {sb .. "/dangling/", "ENOENT"}} do
      local ok, e = pcall(fs.remove, c[1], {recursive = true})
      assert.is_false(ok, c[1] .. " was removed")
      assert.are.same({"io", c[2], c[1]}, {e.kind, e.code, e.path})
    end
    intact(v)
    assert.are.equal("link", fs.stat(sb .. "/lf").type)
    assert.are.equal("link", fs.stat(sb .. "/dangling").type)
  end))

  it("removes a deep and wide tree, and names what it could not remove",
     sandboxed(function(sb)
    local v = victim(sb)
    local p = sb .. "/deep"
    for i = 1, 100 do
      p = p .. "/" .. i
    end
    fs.mkdir(p, {parents = true})
    for i = 1, 300 do fs.write_file(sb .. "/deep/1/f" .. i, "") end
    fs.write_file(p .. "/last", "")
    fs.remove(sb .. "/deep", {recursive = true})
    assert.is_false(fs.exists(sb .. "/deep"))
    local ok, e = pcall(fs.remove, sb .. "/none", {recursive = true})
    assert.are.same({"io", "ENOENT", sb .. "/none"}, {e.kind, e.code, e.path})
    assert.matches("^braid%.fs%.remove ", e.message)
    intact(v)
  end))

  -- A race, so a probable failure, not a certain one: a racer swaps the
  -- tree's directories for links to the victim while the walk runs (in
  -- the window between entering one and removing it, the removal raised
  -- ENOTDIR). The links are inside base, as all here.
  it("removes a directory swapped for a link while it is removed as the "
     .. "link", sandboxed(function(sb, base)
    local v = victim(sb)
    local racer = [[
import os, sys
tree, victim = sys.argv[1], sys.argv[2]
for i in range(100):
    for j in range(5):
        d = "%s/d%d/s%d" % (tree, i, j)
        os.makedirs(d + "/inner")
        open(d + "/f", "w").close()
        open(d + "/inner/g", "w").close()
open(tree + "/../ready", "w").close()
for i in range(100):
    for j in range(5):
        p = "%s/d%d/s%d" % (tree, i, j)
        try:
            os.rename(p, p + ".x")
            os.symlink(victim, p)
        except OSError:
            pass
]]
    for _ = 1, 3 do
      local t = sb .. "/tree"
      local r = braid.spawn(function()
        return braid.exec({"python3", "-c", racer, t, v})
      end)
      while not fs.exists(sb .. "/ready") do braid.sleep(0.001) end
      fs.remove(sb .. "/ready")
      local ok, e = pcall(fs.remove, t, {recursive = true})
      assert.are.equal(0, r:await().code)
      intact(v)
      -- a swapped directory is removed as the link (it raised ENOTDIR); a
      -- rename the walk did not see (a new "sN.x" in a directory already
      -- listed) may still leave that directory not empty: rm -rf too
      assert.is_true(ok or e.code == "ENOTEMPTY", tostring(e))
      if ok then assert.is_false(fs.exists(t)) else fs.remove(t, {recursive = true}) end
    end
  end))

  it("is cancelled at once, leaving nothing running", sandboxed(function(sb)
    local v = victim(sb)
    fs.mkdir(sb .. "/t")
    for i = 1, 200 do
      fs.mkdir(sb .. "/t/" .. i)
      fs.write_file(sb .. "/t/" .. i .. "/f", "")
    end
    local t = braid.spawn(function() fs.remove(sb .. "/t", {recursive = true}) end)
    braid.sleep(0)
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_true(ok or braid.is_cancelled(e), tostring(e))
    fs.remove(sb .. "/t", {recursive = true})   -- what is left, if anything
    assert.is_false(fs.exists(sb .. "/t"))
    intact(v)
  end))
end)
