-- braid.lua: the Lua side of the braid module. The C core passes in its
-- table; this file adds what is best said in Lua, composing C primitives.
-- Nothing here may be needed for cancellation or fail-fast to hold: those
-- live in C.
local M <const> = ...
-- The standard libraries braid's own code uses, kept at load: an embedded
-- engine opens them for this chunk whatever its scripts get, and takes
-- away afterwards what they may not have (embed.c api_openlibs).
local math <const>, string <const>, table <const> = math, string, table
local getenv <const> = os.getenv

local Error <const> = M.Error
local getmetatable, type = getmetatable, type

local function kind_is(kind)
  return function(e)
    return type(e) == "table" and getmetatable(e) == Error and e.kind == kind
  end
end

-- braid.is_timeout(e) -> boolean: e is braid's "timeout" error.
M.is_timeout = kind_is("timeout")

-- braid.is_cancelled(e) -> boolean: e is braid's "cancelled" error.
M.is_cancelled = kind_is("cancelled")

-- braid.is_error(e) -> boolean: e is any braid.Error.
function M.is_error(e)
  return type(e) == "table" and getmetatable(e) == Error
end

M.version = "0.1.0"

local pack, unpack, rawequal = table.pack, table.unpack, rawequal
local setmetatable, pcall, error = setmetatable, pcall, error
-- The real metatable, whatever its __metatable says: braid's Lua-side
-- classes give scripts their name (as the C ones do), so that no script
-- can add a __gc to one or replace its methods (auxlib.c braid__class).
local metatable_of <const> = M._metatable
M._metatable = nil

-- A usage error raised from the Lua side, naming the function.
-- Its position is the script's line that called into braid (error.c).
local raise_usage <const> = M._usage
M._usage = nil
local function usage(fmt, ...)
  raise_usage(fmt:format(...))
end

-- Raises e again, caught by a pcall of braid's own around braid's own code
-- (no script function inside). The search for the script's line stops at
-- that pcall, so a usage error from inside has no position: it is raised
-- again here, at the script's line. Anything else passes unchanged.
local function rethrow(e)
  if M.is_error(e) and e.kind == "usage" then
    usage("%s", (e.message:gsub("^%[braid%]:%d+: ", "")))
  end
  error(e, 0)
end

-- v as an integer, as Lua's own integer arguments take it (2.0 and "2"
-- count as 2, 1.5 does not), or nil.
local function to_integer(v)
  if type(v) == "string" then v = tonumber(v) end
  return type(v) == "number" and math.tointeger(v) or nil
end

-- A usage error for an options table that is not a plain one, as the C
-- functions' check says it (auxlib.c braid__check_options): an __index
-- could answer every option "true", a __pairs hide them.
local function check_opts_table(fname, arg, opts)
  if opts ~= nil and (type(opts) ~= "table" or getmetatable(opts) ~= nil) then
    usage("bad argument #%d to '%s' (options table expected: a plain table "
          .. "without a metatable, got %s)", arg, fname, type(opts) == "table"
          and "a table with a metatable" or type(opts))
  end
end

-- braid.move_on(seconds, fn, ...) -> true, results... | false: fn(...)
-- under a deadline, as braid.timeout, except that the deadline passing is
-- an answer, not an error: false when it cut fn short. Errors of fn (a
-- timeout of its own included) and a cancellation from outside are raised
-- unchanged. Usage errors name braid.move_on.
do
  -- Records what fn's body raised, without catching it: a timeout error
  -- that comes out of braid.timeout and is not that one is move_on's own.
  local Witness <const> = {__close = function(w, e) w.raised = e end}
  local timeout = M.timeout

  -- The seconds are braid.timeout's to check (numeric strings too), and
  -- fn may be callable, as braid.timeout's.
  function M.move_on(seconds, fn, ...)
    local mt = getmetatable(fn)
    if type(fn) ~= "function" and
       not (type(mt) == "table" and rawget(mt, "__call") ~= nil) then
      usage("bad argument #2 to 'braid.move_on' (function expected, got %s)",
            type(fn))
    end
    local w <const> = setmetatable({}, Witness)
    local function body(...)
      local _ <close> = w
      w.entered = true
      return fn(...)
    end
    local r = pack(pcall(timeout, seconds, body, ...))
    if r[1] then return true, unpack(r, 2, r.n) end
    local e = r[2]
    if not w.entered and M.is_error(e) and e.kind == "usage" then
      -- braid.timeout's own refusal (outside a task, cannot suspend here):
      -- said in move_on's name.
      usage("%s", (e.message:gsub("braid%.timeout", "braid.move_on")))
    end
    if M.is_timeout(e) and not rawequal(e, w.raised) then return false end
    error(e, 0)
  end
end

-- braid.condition([lock]) -> condition: tasks wait on it, holding the
-- lock, until another task holding it notifies them. cond:wait() releases
-- the lock while it waits and holds it again when it returns, also when
-- the wait raises (cancellation included); cond:notify([n = 1]) wakes the
-- n longest waiting tasks, cond:notify_all() every one; cond.lock is the
-- lock (a new braid.lock() when none is given). Calling any of them
-- without holding the lock is a usage error.
do
  local Condition <const> = {}
  Condition.__index = Condition
  Condition.__name = "braid.Condition"
  Condition.__metatable = "braid.Condition"
  setmetatable(Condition, {__index = function(_, k)   -- as braid's classes
    if type(k) == "string" and k:sub(1, 1) ~= "_" then
      usage("braid.Condition has no method '%s' (it has wait, notify, "
            .. "notify_all and the field lock)", k)
    end
  end})

  local function check(c, fname)
    if metatable_of(c) ~= Condition then
      usage("bad argument #1 to '%s' (braid.Condition expected, got %s)",
            fname, type(c))
    end
    -- the field is the script's to read, and to spoil
    if getmetatable(c.lock) ~= "braid.Lock" then
      usage("%s: the condition's lock is not a braid.Lock (cond.lock is %s)",
            fname, type(c.lock))
    end
    if not c.lock:owned() then
      usage("%s: the condition's lock is not held by this task", fname)
    end
  end

  -- The waiters: a FIFO queue of their events, c._q[c._head .. c._tail],
  -- with c._slot[ev] its index. A waiter that leaves out of turn leaves a
  -- hole (false); the ends never rest on one (trim), so each hole is
  -- stepped over once and waking and leaving are O(1) each, amortized
  -- (condition:wait was O(n) per leave and wake, notify_all quadratic).
  local function trim(c)
    local q, head, tail = c._q, c._head, c._tail
    while head <= tail and not q[head] do q[head] = nil; head = head + 1 end
    while tail >= head and not q[tail] do q[tail] = nil; tail = tail - 1 end
    if head > tail then head, tail = 1, 0 end   -- empty: start over
    c._head, c._tail = head, tail
  end

  local function wake(c, n)
    local q, slot = c._q, c._slot
    for _ = 1, n do
      local head = c._head
      local ev = q[head]
      if not ev then break end   -- empty (trim keeps no hole at the head)
      q[head], slot[ev] = false, nil
      trim(c)
      ev:set()
    end
  end

  local condition_wait <const> = M._condition_wait
  M._condition_wait = nil

  function Condition:wait()
    check(self, "condition:wait")
    local ev, lock = M.event(), self.lock
    local done = false
    -- On every other way out (an error, a cancellation, an abandonment,
    -- which runs <close> handlers but no error path) the waiter leaves the
    -- queue, and a notification that reached it as it left goes to the
    -- next one rather than being lost.
    local leave <close> = setmetatable({}, {__close = function()
      if done then return end
      local i = self._slot[ev]
      if i then
        self._q[i], self._slot[ev] = false, nil
        trim(self)
      end
      if ev:is_set() then wake(self, 1) end
    end})
    local tail = self._tail + 1
    self._q[tail], self._slot[ev], self._tail = ev, tail, tail
    lock:release()
    local ok, e = pcall(condition_wait, ev)
    M.shield(lock.acquire, lock)     -- held again whatever happened
    if not ok then error(e, 0) end
    done = true
  end

  function Condition:notify(n)
    check(self, "condition:notify")
    local count = to_integer(n)
    if n ~= nil and (count == nil or count < 0) then
      -- a number is shown, anything else named by its type: no __tostring
      -- of the script's runs inside braid's error
      usage("bad argument #2 to 'condition:notify' (non-negative integer "
            .. "expected, got %s)", type(n) == "number" and
            n .. "" or type(n))   -- "2.0", as the check sees it
    end
    wake(self, count or 1)
  end

  function Condition:notify_all()
    check(self, "condition:notify_all")
    wake(self, math.maxinteger)
  end

  function M.condition(lock)
    if lock == nil then
      lock = M.lock()
    elseif getmetatable(lock) ~= "braid.Lock" then
      usage("bad argument #1 to 'braid.condition' (braid.Lock expected, got "
            .. "%s)", type(lock))
    end
    return setmetatable({lock = lock, _q = {}, _head = 1, _tail = 0,
                         _slot = {}}, Condition)
  end
end

-- braid.fs: the tree calls, composed of the C ones (fs.c, fs_path.c).
-- Every one is cancellable and bounded by deadlines through the calls it
-- makes; errors are theirs (kind "io" with `code` and `path`).
if rawget(M, "fs") then
  local fs <const> = M.fs
  local stat, list, mkdir, remove = fs.stat, fs.list, fs.mkdir, fs.remove
  local remove_tree = fs._remove_tree   -- fs_tree.c: never leaves the tree
  fs._remove_tree = nil
  local copy_new, copy_run, copy_wait =  -- fs_copy.c: the chunked job
    fs._copy_new, fs._copy_run, fs._copy_wait
  fs._copy_new, fs._copy_run, fs._copy_wait = nil, nil, nil

  local function io_code(e, ...)
    if not (M.is_error(e) and e.kind == "io") then return false end
    for _, c in ipairs({...}) do if e.code == c then return true end end
    return false
  end

  -- fn(...) for the Lua-side function fname: an error that a C call
  -- inside raises in its own name is said in fname's: a usage error (outside
  -- a task, cannot suspend here, a bad argument handed on) at the script's
  -- line (rethrow), an io error ("braid.fs.stat /x: ...") with its code
  -- and path. Everything else passes unchanged.
  local function as(fname, fn, ...)
    local r = pack(pcall(fn, ...))
    if r[1] then return unpack(r, 2, r.n) end
    local e = r[2]
    if M.is_error(e) and e.kind == "usage" then
      e.message = e.message:gsub("braid%.fs%.[%w_]+", fname, 1)
    elseif M.is_error(e) and e.kind == "io" then
      e.message = e.message:gsub("^braid%.fs%.[%w_]+", fname, 1)
    end
    rethrow(e)
  end

  -- As the C functions' own check: a plain table, no metatable (an
  -- __index could answer every option "true", a __pairs hide them).
  local function check_opts(fname, opts, allowed)
    if opts == nil then return {} end
    check_opts_table(fname, 2, opts)
    for k in next, opts do
      if not allowed[k] then
        usage("bad argument #2 to '%s' (unknown option '%s')", fname,
              tostring(k))
      end
    end
    return opts
  end

  local function check_path(fname, p)
    if type(p) ~= "string" then
      usage("bad argument #1 to '%s' (string expected, got %s)", fname,
            type(p))
    end
  end

  -- fs.exists(path) -> boolean: whether something is there (a link
  -- counts, even a dangling one: it is not followed).
  local function exists(path)
    local ok, e = pcall(stat, path)
    if ok then return true end
    if io_code(e, "ENOENT", "ENOTDIR") then return false end
    error(e, 0)
  end

  function fs.exists(path) return as("braid.fs.exists", exists, path) end

  -- fs.mkdir(path, [mode | opts]): opts.parents makes the missing parents
  -- too and accepts a directory that exists; opts.mode as the mode, of
  -- path only (the parents get the default, as with mkdir -p -m: a mode
  -- without write permission would stop the next level).
  function fs.mkdir(path, opts)
    if type(opts) ~= "table" then return mkdir(path, opts) end
    check_opts("braid.fs.mkdir", opts, {parents = true, mode = true})
    if not opts.parents then return mkdir(path, opts.mode) end
    check_path("braid.fs.mkdir", path)
    local function exists_as_dir(e)
      return io_code(e, "EEXIST") and
             as("braid.fs.mkdir", stat, path).type == "directory"
    end
    local ok, e = pcall(mkdir, path, opts.mode)
    if ok or exists_as_dir(e) then return end
    if not io_code(e, "ENOENT") then rethrow(e) end
    local parent = path:match("^(.*[^/])/+[^/]+/*$")
    if not parent then rethrow(e) end
    fs.mkdir(parent, {parents = true})
    ok, e = pcall(mkdir, path, opts.mode)
    if ok or exists_as_dir(e) then return end
    rethrow(e)
  end

  -- fs.remove(path, [opts]): a file, a link or an empty directory;
  -- opts.recursive removes a directory with everything in it (links are
  -- removed, not followed). Like rm, it refuses a path whose last part is
  -- "." or ".." (the tree would be the parent's or the caller's own
  -- directory, reached through whatever links the path holds); with
  -- recursive also "" and "/" (also spelt "//", or a path whose real path
  -- is "/"), and "link/" (the directory behind a link); "file/" is
  -- ENOTDIR, as for rm. The walk is C's (fs_tree.c), which never leaves
  -- the tree.
  function fs.remove(path, opts)
    opts = check_opts("braid.fs.remove", opts, {recursive = true})
    if type(path) == "string" then
      local last = path:gsub("/+$", ""):match("[^/]*$")
      if last == "." or last == ".." then
        usage("braid.fs.remove: refusing to remove '.' or '..' (got %q)", path)
      end
    end
    if not opts.recursive then return remove(path) end
    check_path("braid.fs.remove", path)
    local there = path ~= "" and as("braid.fs.remove", exists, path)
    if path == "" or path:find("^/+$") or
       (there and select(2, pcall(fs.realpath, path)) == "/") then
      usage("braid.fs.remove: refusing to remove %q recursively", path)
    end
    local root = path:gsub("(.)/+$", "%1")
    if root ~= path then
      -- "x/" names a directory: the walk gets "x" without its '/', so a
      -- file, or a link to one or to nothing, must fail here (ENOTDIR,
      -- ENOENT: stat follows a link for the '/'), as rm does
      as("braid.fs.remove", stat, path)
      if as("braid.fs.remove", stat, root).type == "link" then
        usage("braid.fs.remove: refusing to remove the directory behind "
              .. "the link %q recursively (without the '/', the link is "
              .. "removed)", path)
      end
    end
    return remove_tree(root)
  end

  -- fs.walk(dir, [opts]) -> iterator of path, type: every entry under dir,
  -- depth first, a directory before its contents, names in sorted order.
  -- Links are listed as "link" and not followed unless opts.follow (then
  -- a link to a directory is walked into, once per real directory, and
  -- its type is the target's). An entry that vanishes while the walk runs
  -- is skipped, as find does: one gone before it is looked at is not
  -- returned, a directory gone before it is listed has no entries.
  local function walk(dir, opts)
    opts = check_opts("braid.fs.walk", opts, {follow = true})
    check_path("braid.fs.walk", dir)
    local follow, seen = opts.follow, {}
    if follow then seen[fs.realpath(dir)] = true end
    local stack = {{dir = dir, names = list(dir), i = 0}}
    -- fn(p): its result, or nil when p is gone (ENOENT, or ENOTDIR: a
    -- directory on the way was replaced)
    local function unless_gone(fn, p)
      local ok, r = pcall(fn, p)
      if ok then return r end
      if io_code(r, "ENOENT", "ENOTDIR") then return nil end
      rethrow(r)
    end
    -- A step that raises (cancelled while it waits in list, stat or
    -- realpath) has changed nothing: the next one takes the same entry.
    -- So an entry is taken (top.i) only once nothing below can raise, and
    -- a directory is listed when the walk first steps into it.
    return function()
      while #stack > 0 do
        local top = stack[#stack]
        if top.names == nil then top.names = unless_gone(list, top.dir) or {} end
        local name = top.names[top.i + 1]
        local p = name and top.dir .. "/" .. name
        local st = p and unless_gone(stat, p)
        if name == nil then
          stack[#stack] = nil
        elseif not st then
          top.i = top.i + 1   -- gone: skipped
        else
          local kind, real = st.type, nil
          local into = kind == "directory"
          if follow and kind == "link" then
            local ok, r = pcall(fs.realpath, p)
            if ok then
              kind = stat(r).type
              into = kind == "directory" and not seen[r]
              if into then real = r end
            end
          elseif follow and into then
            real = unless_gone(fs.realpath, p)
            into = real and not seen[real]
          end
          top.i = top.i + 1
          if real then seen[real] = true end
          if into then stack[#stack + 1] = {dir = p, i = 0} end
          return p, kind
        end
      end
    end
  end

  -- A step suspends (list, stat): a second task stepping the same walk
  -- meanwhile would pop the first one's directory, and entries were lost.
  -- The flag goes also when a step raises (cancelled, say): the next
  -- step takes the same entry.
  function fs.walk(dir, opts)
    local step = as("braid.fs.walk", walk, dir, opts)
    local state <const> = setmetatable({busy = false}, {
      __close = function(st) st.busy = false end})
    return function()
      if state.busy then
        usage("braid.fs.walk: another task is stepping this walk")
      end
      state.busy = true
      local _ <close> = state
      return as("braid.fs.walk", step)
    end
  end

  -- fs.copy(from, to): the contents of the regular file `from` (read to
  -- its end, whatever its size says: /proc files too) and its permission
  -- bits into `to`, replaced. Errors kind "io" with `code` and the `path`
  -- at fault. A cancelled copy waits, shielded, for the chunk in flight, so
  -- that nothing is written to `to` once it has returned.
  function fs.copy(from, to)
    local job = copy_new(from, to)
    local ok, e = pcall(copy_run, job)
    if not ok then
      M.shield(copy_wait, job)
      rethrow(e)
    end
  end

  -- fs.lines(path, [opts]) -> iterator over the lines of a file, read in
  -- chunks (memory stays within about max_line); for a generic for, which
  -- closes the file when the loop ends, also by break or error.
  function fs.lines(path, opts)
    local f = as("braid.fs.lines", fs.open, path, "r", opts)
    return function()
      local line = f:read_line()
      if line == nil then f:close() end
      return line
    end, nil, nil, f
  end

  -- fs.tmpdir([prefix]) -> guard: a new private directory (mode 0700)
  -- under $TMPDIR or /tmp, named prefix (default "braid-") and six random
  -- characters. guard.path is its path (also tostring(guard) and
  -- guard .. "/name"); closing the guard (<close>, guard:close()) removes
  -- it with everything inside, shielded from the task's cancellation.
  -- What closing removes is the directory made, kept here (guard -> path)
  -- and not in the field, which the script can change.
  local made <const> = setmetatable({}, {__mode = "k"})
  local Tmpdir <const> = {}
  Tmpdir.__index = Tmpdir
  Tmpdir.__name = "braid.Tmpdir"
  Tmpdir.__metatable = "braid.Tmpdir"
  function Tmpdir.__tostring(g) return g.path end
  function Tmpdir.__concat(a, b)
    return (metatable_of(a) == Tmpdir and a.path or a) ..
           (metatable_of(b) == Tmpdir and b.path or b)
  end
  function Tmpdir:close()
    local path = made[self]
    if path == nil then return end   -- closed, or not made by fs.tmpdir
    made[self] = nil   -- another task's close meanwhile does nothing
    local ok, err = pcall(M.shield, function()
      if fs.exists(path) then remove_tree(path) end
    end)
    if not ok then
      -- not (all) removed: a later close tries again, as it says
      if made[self] == nil then made[self] = path end
      error(err, 0)
    end
  end
  Tmpdir.__close = Tmpdir.close

  function fs.tmpdir(prefix)
    if prefix ~= nil and (type(prefix) ~= "string" or prefix:find("/")) then
      usage("bad argument #1 to 'braid.fs.tmpdir' (a name prefix without "
            .. "'/' expected)")
    end
    local base = getenv("TMPDIR")
    if base == nil or base == "" then base = "/tmp" end
    local path = fs._mkdtemp(base:gsub("/+$", "") .. "/" ..
                             (prefix or "braid-") .. "XXXXXX")
    local g = setmetatable({path = path}, Tmpdir)
    made[g] = path
    return g
  end
end

-- Pools of workers. braid.worker (io/worker.c) owns the threads and the
-- crossing; a pool only spreads calls over its workers.
local Pool <const> = {}
Pool.__index = Pool
Pool.__name = "braid.Pool"   -- tostring: "braid.Pool: 0x..."
Pool.__metatable = "braid.Pool"

-- The call slot of one worker, given back however the call ends.
local Slot <const> = {__close = function(s) s[1][s[2]] = s[1][s[2]] - 1 end}

-- braid.pool([n], source, [opts]) -> pool: n workers (default
-- braid.cpu_count()), each made by braid.worker(source, opts); they belong
-- to the scope the pool was made in. Errors: braid.worker's.
-- new_pool(n, source, opts, fname, what, wargs): what names n in a usage
-- error ("argument #1", or braid.map's "option 'workers'"), wargs[i]
-- braid.worker's argument i as the script passed it ("argument #2",
-- "option 'module'"): "bad argument #1 to 'braid.worker'" named a function
-- the script never called.
local function new_pool(n, source, opts, fname, what, wargs)
  if M.current() == nil then usage("%s: not inside a braid task", fname) end
  local count = n == nil and M.cpu_count() or to_integer(n)
  if count == nil or count < 1 then
    usage("bad %s to '%s' (positive integer expected, got %s)", what, fname,
          type(n) == "number" and n .. "" or type(n))
  end
  local self = setmetatable({n = count, workers = {}, busy = {}}, Pool)
  for i = 1, count do
    local ok, w = pcall(M.worker, source, opts)
    if not ok then
      self:close()
      local a, rest
      if M.is_error(w) and w.kind == "usage" then
        a, rest = w.message:match("^bad argument #(%d+) to 'braid%.worker' (.*)$")
      end
      if a and wargs[tonumber(a)] then
        usage("bad %s to '%s' %s", wargs[tonumber(a)], fname, rest)
      end
      rethrow(w)
    end
    self.workers[i], self.busy[i] = w, 0
  end
  return self
end

function M.pool(n, source, opts)
  if type(n) == "string" then
    return new_pool(nil, n, source, "braid.pool", "argument #1",
                    {"argument #1", "argument #2"})
  end
  return new_pool(n, source, opts, "braid.pool", "argument #1",
                  {"argument #2", "argument #3"})
end

-- e, a usage error of worker:call's own (its checks, "the worker has no
-- function 'x'", which the worker's thread raises without a position) or
-- of braid.map's (for pool:map, whose arguments are one further on: shift
-- 1), is raised again in fname's name at the script's line. A pool's
-- calls spoke as worker:call, and one made by a pool:map member had no
-- position. Anything else is left to the caller to raise again, from a
-- line of its own (a failure record is kept by a re-raise from another
-- line, error.c).
local function pool_usage(e, fname, shift)
  if not M.is_error(e) then return end
  local m = e.message
  if e.kind ~= "usage" then   -- "closed", "memory": in place, as fs's
    if type(m) == "string" then e.message = m:gsub("^worker:call:", fname .. ":") end
    return
  end
  if m:find("^args%[") then usage("%s", m) end   -- crossing: no position
  -- shift: pool:map's or braid.map's own level, where a member's error
  -- (said in fname's name already, without a position) arrives
  for _, who in ipairs({"worker:call", shift and "braid.map", shift and fname}) do
    local pat = who:gsub("%p", "%%%0")
    -- a check's message ("pos: bad argument #2 to 'worker:call' (...)",
    -- the position where one was found) or a refusal ("worker:call: ...")
    local rest = m:match("^.-:%d+: (bad %a+ .- to '" .. pat .. "' .*)$") or
                 m:match("^bad %a+ .- to '" .. pat .. "' .*$") or
                 m:match("^" .. pat .. ": .*$")
    if rest then
      rest = rest:gsub("^bad argument #(%d+) to '" .. pat .. "'", function(a)
        return ("bad argument #%d to '%s'"):format(a + (shift or 0), fname)
      end)
      usage("%s", (rest:gsub(pat, fname, 1)))
    end
  end
end

-- pool:call(fname, ...) -> ...: worker:call on the worker with the fewest
-- calls in flight.
local function pool_call(self, as, fname, ...)
  local busy, best = self.busy, 1
  for i = 2, self.n do
    if busy[i] < busy[best] then best = i end
  end
  busy[best] = busy[best] + 1
  local slot <close> = setmetatable({busy, best}, Slot)
  local r = pack(pcall(self.workers[best].call, self.workers[best], fname, ...))
  if r[1] then return unpack(r, 2, r.n) end
  pool_usage(r[2], as)
  error(r[2], 0)
end

function Pool:call(fname, ...)
  if metatable_of(self) ~= Pool then
    usage("bad argument #1 to 'pool:call' (braid.Pool expected, got %s)",
          type(self))
  end
  return pool_call(self, "pool:call", fname, ...)
end

-- pool:map(list, fname, [opts]) -> results: braid.map over the pool,
-- fname(item, i) in a worker for every item; opts as braid.map's, limit
-- defaulting to two calls per worker (the next item goes to whichever
-- worker is free first). as names it in errors (pool:map, or braid.map
-- for braid.map(list, fname, {module = ...}), whose arguments are one
-- place earlier: shift 0).
local function pool_map(self, list, fname, opts, as, shift)
  if type(fname) ~= "string" then
    usage("bad argument #%d to '%s' (string expected, got %s)", 2 + shift,
          as, type(fname))
  end
  check_opts_table(as, 3 + shift, opts)
  local o = {limit = 2 * self.n}
  for k, v in next, opts or o do o[k] = v end
  -- The errors members raised, seen on their way out (not caught): a
  -- timeout error that is not one of them is braid.map's own, said in
  -- as's name.
  local raised = setmetatable({}, {__mode = "k"})
  local witness <const> = setmetatable({}, {__close = function(_, e)
    if type(e) == "table" then raised[e] = true end
  end})
  local r = pack(pcall(M.map, list, function(item, i)
    local _ <close> = witness
    return pool_call(self, as, fname, item, i)
  end, o))
  if r[1] then return unpack(r, 2, r.n) end
  local e = r[2]
  if M.is_timeout(e) and not raised[e] and type(e.message) == "string" then
    e.message = e.message:gsub("^braid%.map", as)
  end
  pool_usage(e, as, shift)
  error(e, 0)
end

function Pool:map(list, fname, opts)
  if metatable_of(self) ~= Pool then
    usage("bad argument #1 to 'pool:map' (braid.Pool expected, got %s)",
          type(self))
  end
  return pool_map(self, list, fname, opts, "pool:map", 1)
end

-- pool:close(): closes every worker (each waits for its thread to end).
function Pool:close()
  for _, w in ipairs(self.workers) do w:close() end
end
Pool.__close = Pool.close

-- braid.map(list, fname, {module = source, workers = n, ...}): fname runs
-- in a pool of n workers (default braid.cpu_count()) loading source, made
-- for this call and closed after it; other options are braid.map's. With
-- a function instead of a name, braid.map as ever.
local map <const> = M.map
function M.map(list, fn, opts)
  if type(fn) ~= "string" then return map(list, fn, opts) end
  check_opts_table("braid.map", 3, opts)
  local o, source, n = {}, nil, nil
  for k, v in next, opts or o do
    if k == "module" then source = v
    elseif k == "workers" then n = v
    else o[k] = v end
  end
  if source == nil then
    usage("braid.map: a function name needs opts.module (the workers' "
          .. "module, file or chunk)")
  end
  local pool <close> = new_pool(n, source, nil, "braid.map", "option 'workers'",
                                {"option 'module'"})
  return pool_map(pool, list, fn, o, "braid.map", 0)
end
