-- repl.lua: the interactive session of the braid command, run as the root
-- task's body (engine/repl.c passes braid, its `repl` table and the
-- prelude: -e chunks and the script, or nil). Each entry runs as a task of
-- its own; what an entry spawns belongs to the session and keeps running.
local braid, repl, prelude = ...

local concat, pack, unpack = table.concat, table.pack, table.unpack
local select, tostring, type, pcall = select, tostring, type, pcall

local MAX_ITEMS <const> = 30   -- a table shows this many entries, then "..."
local MAX_DEPTH <const> = 4    -- deeper tables show as {...}

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in
  local nil not or repeat return then true until while]]):gmatch("%a+") do
  keywords[w] = true
end

local function quote(s)
  return (("%q"):format(s):gsub("\\\n", "\\n"))
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

-- heap_add(h, k, key): keeps in h the k first keys in key_order
-- among those given to it one at a time, in a max-heap (h[1] the
-- greatest): a table with a million keys showed 30 of them after sorting
-- them all. O(n log k); the caller sorts the k kept.
local function heap_add(h, k, key)
  local n = #h
  if n < k then
    n = n + 1
    h[n] = key
    while n > 1 do   -- up
      local p = n // 2
      if not key_order(h[p], h[n]) then break end
      h[p], h[n] = h[n], h[p]
      n = p
    end
  elseif key_order(key, h[1]) then
    h[1] = key
    local i = 1
    while true do    -- down
      local l, big = 2 * i, i
      if l <= n and key_order(h[big], h[l]) then big = l end
      if l + 1 <= n and key_order(h[big], h[l + 1]) then big = l + 1 end
      if big == i then break end
      h[i], h[big] = h[big], h[i]
      i = big
    end
  end
end

-- show(v, depth, path) -> string: v readably; tables nested, cycles marked
-- (path: the tables being shown), long ones cut. Read raw, and only what
-- is shown is visited: a __len of math.huge walked every index.
local function show(v, depth, path)
  local tv = type(v)
  if tv == "string" then return quote(v) end
  if tv ~= "table" then return tostring(v) end
  -- raw: braid's tables (braid, braid.fs, ...) hide their metatables
  local mt = (debug and debug.getmetatable or getmetatable)(v)
  if mt ~= nil and (type(mt) ~= "table" or rawget(mt, "__tostring")) then
    return tostring(v)
  end
  if path[v] then return "<cycle>" end
  if depth >= MAX_DEPTH then return "{...}" end
  path[v] = true
  local parts, n, len, keys, nkeys = {}, 0, rawlen(v), {}, 0
  for i = 1, math.min(len, MAX_ITEMS) do
    n = n + 1
    parts[n] = show(rawget(v, i), depth + 1, path)
  end
  local room = MAX_ITEMS - n
  for k in next, v do
    if not (math.type(k) == "integer" and k >= 1 and k <= len) then
      nkeys = nkeys + 1
      if room > 0 then heap_add(keys, room, k) end
    end
  end
  table.sort(keys, key_order)
  for _, k in ipairs(keys) do
    local ks = (type(k) == "string" and k:match("^[%a_][%w_]*$") and
                not keywords[k]) and k or "[" .. show(k, MAX_DEPTH, path) .. "]"
    n = n + 1
    parts[n] = ks .. " = " .. show(rawget(v, k), depth + 1, path)
  end
  local total = len + nkeys
  if total > n then parts[n + 1] = "... (" .. (total - n) .. " more)" end
  path[v] = nil
  return "{" .. concat(parts, ", ") .. "}"
end

-- What an expression's values look like at the prompt: strings as print
-- shows them, everything else readably.
-- The pcalls never keep the entry's cancellation (Ctrl-C while a
-- __tostring loops): caught, the rendering went on, spinning in the same
-- __tostring until the grace period abandoned the entry.
local function render(v)
  if type(v) == "string" then return v end
  local ok, s = pcall(show, v, 0, {})
  if ok then return s end
  if braid.is_cancelled(s) then error(s, 0) end
  -- show failed (a __tostring that raises, say): plain tostring would
  -- raise again, and an error here ended the whole session
  ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  if not ok and braid.is_cancelled(s) then error(s, 0) end
  return ("%s (its __tostring failed)"):format(type(v))
end

-- Output from tasks while the prompt is shown: hide the prompt and the
-- partly typed line, write, then draw them again below.
local function guarded(write, ends_line)
  return function(...)
    if not repl.hide() then return write(...) end
    local r = pack(pcall(write, ...))
    repl.show(ends_line(...))
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end

local function always() return true end

local function last_is_newline(...)
  for i = select("#", ...), 1, -1 do
    local s = select(i, ...)
    if type(s) == "number" then s = tostring(s) end
    if type(s) == "string" and #s > 0 then return s:sub(-1) == "\n" end
  end
  return true
end

local function install_guards()
  print = guarded(print, always)
  io.write = guarded(io.write, last_is_newline)
  local methods = getmetatable(io.stdout).__index
  local write = methods.write
  local gwrite = guarded(write, function(_, ...) return last_is_newline(...) end)
  methods.write = function(f, ...)
    if f == io.stdout or f == io.stderr then return gwrite(f, ...) end
    return write(f, ...)
  end
end

local help = [[
Each entry runs as a task: braid.sleep, task:await, braid.gather... work
here, and tasks spawned with braid.spawn keep running in the background
(their failures are printed; the session goes on). `_` is the last value.
  :tasks   list the live tasks        :help   this text
  Ctrl-C   cancel the running entry, or clear the line
  Ctrl-D   cancel the background tasks and leave]]

local function list_tasks()
  local me, n = braid.current(), 0
  for _, t in ipairs(braid.tasks()) do
    if t ~= me then
      local depth, p = 0, t.parent
      while p and p ~= me do depth, p = depth + 1, p.parent end
      print(("  "):rep(depth) .. tostring(t))
      n = n + 1
    end
  end
  if n == 0 then print("no live tasks") end
end

-- run_entry(fn, name) -> ok, results (a packed table) | error: fn as a
-- task of its own, awaited; Ctrl-C cancels it.
-- fn is the task's own function, so that a traceback of an error in the
-- entry shows the entry alone, as the stock REPL shows a main chunk.
local function run_entry(fn, name)
  local t = braid.spawn(fn)
  t.name = name
  repl.set_entry(t)
  local r = pack(pcall(t.await, t))
  repl.set_entry(nil)
  if not r[1] then return false, r[2] end
  return true, pack(unpack(r, 2, r.n))
end

-- An entry cancelled by Ctrl-C, or abandoned by a second one (the only way
-- an entry is abandoned), was interrupted. One cancelled with the session
-- (os.exit, SIGTERM: the checkpoint raises) did not fail: os.exit(3)
-- printed "cancelled (exit)" before leaving; the session ends here.
local function report(err)
  if braid.is_cancelled(err) and (err.reason == "interrupt" or
      err.reason == "abandoned after its grace period") then
    io.stderr:write("interrupted\n")
  else
    if braid.is_cancelled(err) then
      local ok, e = pcall(braid.yield)
      if not ok then error(e, 0) end
    end
    repl.report(err)
  end
end

-- compile(src) -> fn | nil, err, incomplete: as an expression first.
local function compile(src)
  local fn = load("return " .. src, "=stdin", "t")
  if fn then return fn end
  local err
  fn, err = load(src, "=stdin", "t")
  if fn then return fn end
  return nil, err, err:sub(-5) == "<eof>"
end

local function evaluate(src)
  local name = src:match("^%s*([^\n]*)")
  if #name > 40 then name = name:sub(1, 37) .. "..." end
  local fn, err = compile(src)
  if not fn then
    io.stderr:write(err, "\n")
    return
  end
  local ok, r = run_entry(fn, name)
  if not ok then return report(r) end
  if r.n > 0 then
    -- Rendering runs the values' __tostring: an entry of its own, so that
    -- a Ctrl-C there cancels it and not the session (it ended the REPL).
    local shown, line = run_entry(function()
      local out = {}
      for i = 1, r.n do out[i] = render(r[i]) end
      return concat(out, "\t")
    end, name)
    if not shown then return report(line) end
    _G._ = r[1]
    print(line[1])
  end
end

return function()
  local session <close> = setmetatable({}, {__close = function()
    repl.close()
  end})
  repl.open()
  braid.current().name = "repl"
  if prelude then
    local ok, err = run_entry(prelude, "script")
    if not ok then
      if not (braid.is_cancelled(err) and err.reason == "interrupt") then
        error(err, 0)
      end
      report(err)
    end
  end
  install_guards()
  local chunk
  while true do
    local line = repl.readline(chunk and ">> " or "> ")
    if line == nil then io.stdout:write("\n") break end
    if line == false then
      chunk = nil
    elseif not chunk and line:match("^%s*:") then
      local cmd = line:match("^%s*:(%a*)")
      repl.add_history(line)
      if cmd == "tasks" then list_tasks()
      elseif cmd == "help" then print(help)
      elseif cmd == "quit" then break
      else io.stderr:write("unknown command ", line, " (try :help)\n") end
    else
      repl.add_history(line)
      chunk = chunk and chunk .. "\n" .. line or line
      local fn, _, incomplete = compile(chunk)
      if fn or not incomplete then
        local src = chunk
        chunk = nil
        evaluate(src)
      end
    end
  end
  local n = repl.cancel_background()
  if n > 0 then
    print(("cancelling %d background task%s"):format(n, n == 1 and "" or "s"))
  end
end
