-- tools/fuzz.lua: cancellation fuzzer for braid.
--
--   LUA_CPATH='build/?.so;;' lua5.4 tools/fuzz.lua [first_seed] [count]
--
-- From each seed (math.randomseed(seed), the only randomness) it generates a
-- random workflow tree -- gather (settle/limit/timeout), race, any, map,
-- timeout, scope (+ scope:cancel), shield, spawn+await, task:cancel from a
-- sibling, channel and semaphore traffic, pcall, sleeps and errors, real I/O
-- (a process, a TCP round trip, a file), worker calls (a small worker per
-- step: a call, a caller cancelled mid-call, the worker closed with a call
-- in flight) and channel exchanges through braid.select in place of some
-- sleeps, with a <close> variable in every
-- function -- runs it under
-- braid.run(fn, {clock = "virtual"}) and checks invariants that need no full
-- model (see `check` below and the comments at each construct), and that
-- the registry, the heap and the open descriptors return to their baseline.
-- A failing seed prints a one-line reproduction, the tree, and exits 1. A
-- seed's tree and timer order replay exactly; only the order in which
-- concurrent real I/O completes can differ between runs (FUZZ_IO=0 turns
-- the I/O steps off for exact replay; FUZZ_SELECT=0 the exchanges;
-- FUZZ_CLOSEERR=0 the <close> handlers that fail while unwinding;
-- FUZZ_WORKER=0 the worker calls).
--
-- As a module (require "tools.fuzz" is not needed: dofile returns M) it is used
-- by spec/fuzz_spec.lua: M.run_seed(seed) -> ok, report.
local braid = require "braid"

local M = {}

-- A fresh name to prefix the fs steps' files with (the empty file that
-- os.tmpname makes is removed: only the unique name is used).
M.tmp = os.tmpname()
os.remove(M.tmp)
do
  local f = io.open("/proc/self/stat")   -- our pid, for counting our fds
  M.pid = f and f:read("n")
  if f then f:close() end
end

---------------------------------------------------------------------------
-- generator
---------------------------------------------------------------------------
local rand = math.random
local nid

local function pick(t) return t[rand(#t)] end
local function dur() return pick({0, 0, 0.5, 1, 1, 2, 3, 5, 10}) end

local gen

local function kids(depth, lo, hi)
  local t = {}
  for i = 1, rand(lo, hi) do t[i] = gen(depth + 1) end
  return t
end

local function leaf()
  nid = nid + 1
  local node = {kind = "leaf", id = nid, steps = {}}
  for i = 1, rand(0, 3) do
    local r = rand(10)
    if r <= 6 then node.steps[i] = {"sleep", dur()}
    elseif r <= 7 then node.steps[i] = {"yield"}
    elseif r <= 8 and rand(2) == 1 then node.steps[i] = {"stubborn", dur()}
    else node.steps[i] = {"error"}; break end
  end
  return node
end

function gen(depth)
  if depth >= 5 or rand(10) <= 3 then return leaf() end
  nid = nid + 1
  local id = nid
  local r = rand(15)
  if r == 1 then
    local opts = {}
    if rand(3) == 1 then opts.settle = true end
    if rand(3) == 1 then opts.limit = rand(1, 3) end
    if rand(3) == 1 then opts.timeout = dur() end
    if rand(6) == 1 then opts.grace = pick({0, 0.5, 1, 3}) end
    return {kind = "gather", id = id, kids = kids(depth, 0, 4), opts = opts}
  elseif r == 2 then
    local opts = {}
    if rand(4) == 1 then opts.timeout = dur() end
    return {kind = "race", id = id, kids = kids(depth, 1, 3), opts = opts}
  elseif r == 3 then
    local opts = {}
    if rand(4) == 1 then opts.timeout = dur() end
    return {kind = "any", id = id, kids = kids(depth, 0, 3), opts = opts}
  elseif r == 4 then
    local opts = {}
    if rand(3) == 1 then opts.settle = true end
    if rand(3) == 1 then opts.limit = rand(1, 3) end
    if rand(3) == 1 then opts.timeout = dur() end
    return {kind = "map", id = id, kids = kids(depth, 0, 4), opts = opts}
  elseif r == 5 then
    return {kind = "timeout", id = id, d = pick({0, 0.5, 1, 2, 4, 8, -1}), kid = gen(depth + 1)}
  elseif r == 6 then
    return {kind = "scope", id = id, body = gen(depth + 1), kids = kids(depth, 0, 3),
            cancel_at = rand(3) == 1 and dur() or nil,
            grace = rand(5) == 1 and pick({0, 0.5, 1, 3}) or nil}
  elseif r == 7 then
    return {kind = "shield", id = id, kid = gen(depth + 1)}
  elseif r == 8 then
    return {kind = "spawn_await", id = id, kid = gen(depth + 1), pre = rand(2) == 1 and dur() or nil}
  elseif r == 9 then
    return {kind = "cancel_sibling", id = id, kid = gen(depth + 1), d = dur()}
  elseif r == 10 then
    return {kind = "pcall", id = id, kid = gen(depth + 1)}
  elseif r == 11 then
    return {kind = "channel", id = id, cap = rand(0, 2), n = rand(0, 5),
            psleep = dur(), csleep = dur(), perr = rand(6) == 1 and rand(0, 5) or nil,
            cerr = rand(6) == 1 and rand(0, 5) or nil}
  elseif r == 12 then
    return {kind = "semaphore", id = id, n = rand(1, 2), kids = kids(depth, 1, 4)}
  elseif r == 13 then
    return {kind = "event", id = id, d = dur(), kids = kids(depth, 1, 3)}
  elseif r == 14 then
    return {kind = "coroutine", id = id, kids = kids(depth, 1, 3)}
  else
    return {kind = "seq", id = id, kids = kids(depth, 1, 3)}
  end
end

-- Real I/O steps (a process, a TCP round trip, an HTTP GET, a file) replace some sleeps,
-- drawn from a second random stream so that the trees of earlier seeds
-- (tools/fuzz_findings.md) keep their shape. FUZZ_IO=0 turns them off.
local IO_KINDS = {"exec", "proc", "tcp", "fs", "http"}

-- Replaces some sleep steps of every leaf under node, each with odds 1 in
-- `odds`, by make(step): the one walk (body, kid, kids, in that order)
-- every stream of extra steps below makes, so a seed's draws, and the
-- trees of earlier seeds, stay as they were.
local function replace_sleeps(node, odds, make)
  if node.kind == "leaf" then
    for i, s in ipairs(node.steps) do
      if s[1] == "sleep" and rand(odds) == 1 then node.steps[i] = make(s) end
    end
  end
  if node.body then replace_sleeps(node.body, odds, make) end
  if node.kid then replace_sleeps(node.kid, odds, make) end
  for _, c in ipairs(node.kids or {}) do replace_sleeps(c, odds, make) end
end

local function add_io(node)
  replace_sleeps(node, 6, function() return {"io", pick(IO_KINDS)} end)
end

-- Channel exchanges (braid.select among plain sends and receives) replace
-- some of the sleeps left, drawn from a third random stream for the same
-- reason. An exchange: a few channels (capacities 0-2), producers and
-- consumers, each a list of operations: a plain send or recv on one
-- channel, or a select over 1-3 cases (mostly sends for a producer,
-- mostly receives for a consumer), sometimes with default or a timeout;
-- some retry once, shielded with a timeout, when cancelled. FUZZ_SELECT=0
-- turns them off.
local function gen_xchg()
  local x = {caps = {}, prods = {}, cons = {}, watch = pick({5, 10, 20})}
  for c = 1, rand(1, 3) do x.caps[c] = rand(0, 2) end
  local nc = #x.caps
  local function op(mine, other)
    local o = {}
    if rand(4) == 1 then
      o.plain = {rand(nc), mine}
    else
      o.cases = {}
      for i = 1, rand(1, 3) do o.cases[i] = {rand(nc), rand(4) == 1 and other or mine} end
      local d = rand(6)
      if d == 1 then o.default = true elseif d == 2 then o.timeout = dur() end
    end
    if rand(3) == 1 then o.sleep = dur() end
    if rand(6) == 1 then o.stubborn = dur() + 0.5 end
    return o
  end
  for p = 1, rand(1, 3) do
    x.prods[p] = {}
    for j = 1, rand(0, 4) do x.prods[p][j] = op("send", "recv") end
  end
  for c = 1, rand(1, 3) do
    x.cons[c] = {}
    for j = 1, rand(0, 5) do x.cons[c][j] = op("recv", "send") end
  end
  local function counts(lists)
    local t = {}
    for i, ops in ipairs(lists) do t[i] = #ops end
    return table.concat(t, ",")
  end
  -- caps of the channels; the number of operations of each producer, consumer
  x.desc = string.format("caps=%s prods=%s cons=%s", table.concat(x.caps, ","),
    counts(x.prods), counts(x.cons))
  return x
end

local function add_select(node)
  replace_sleeps(node, 5, function() return {"xchg", gen_xchg()} end)
end

-- A sleep step sometimes becomes "closeerr": the leaf's <close> handler for
-- that stretch raises the leaf's own error when the block is left by an
-- error or a cancellation (issue 13.8: such errors used to vanish, and the
-- handler ran outside the task). The error replaces what was unwinding.
local function add_closeerr(node)
  replace_sleeps(node, 6, function(st) return {"closeerr", st[2]} end)
end

-- Worker calls replace some of the sleeps left (a fourth random stream):
-- a small worker made for the step and closed by it; mode 1 calls it,
-- mode 2 also cancels a caller in the middle of a call, mode 3 closes the
-- worker with a call in flight. FUZZ_WORKER=0 turns them off.
local function add_worker(node)
  replace_sleeps(node, 8, function() return {"worker", rand(3)} end)
end

function M.generate(seed)
  math.randomseed(seed)
  nid = 0
  local tree = gen(0)
  if os.getenv("FUZZ_IO") ~= "0" then
    math.randomseed(seed, 1)
    add_io(tree)
  end
  if os.getenv("FUZZ_SELECT") ~= "0" then
    math.randomseed(seed, 2)
    add_select(tree)
  end
  if os.getenv("FUZZ_CLOSEERR") ~= "0" then
    math.randomseed(seed, 3)
    add_closeerr(tree)
  end
  if os.getenv("FUZZ_WORKER") ~= "0" then
    math.randomseed(seed, 4)
    add_worker(tree)
  end
  return tree
end


---------------------------------------------------------------------------
-- pretty printer
---------------------------------------------------------------------------
local function fmt_opts(o)
  local p = {}
  for _, k in ipairs({"settle", "limit", "timeout", "grace"}) do
    if o and o[k] ~= nil then p[#p + 1] = k .. "=" .. tostring(o[k]) end
  end
  return "{" .. table.concat(p, ", ") .. "}"
end

function M.pretty(node, ind, out)
  ind = ind or ""
  out = out or {}
  local k = node.kind
  local head = ind .. "#" .. node.id .. " " .. k
  if k == "leaf" then
    local s = {}
    for _, st in ipairs(node.steps) do
      local arg = type(st[2]) == "table" and st[2].desc or st[2]
      s[#s + 1] = st[1] .. (arg and ("(" .. arg .. ")") or "")
    end
    out[#out + 1] = head .. " [" .. table.concat(s, ", ") .. "]"
  elseif k == "gather" or k == "race" or k == "any" or k == "map" then
    out[#out + 1] = head .. " " .. fmt_opts(node.opts)
  elseif k == "timeout" then out[#out + 1] = head .. " " .. node.d
  elseif k == "scope" then
    out[#out + 1] = head .. (node.cancel_at and (" cancel_at=" .. node.cancel_at) or "") ..
      (node.grace and (" grace=" .. node.grace) or "")
  elseif k == "spawn_await" then out[#out + 1] = head .. (node.pre and (" pre=" .. node.pre) or "")
  elseif k == "cancel_sibling" then out[#out + 1] = head .. " d=" .. node.d
  elseif k == "channel" then
    out[#out + 1] = string.format("%s cap=%d n=%d psleep=%s csleep=%s perr=%s cerr=%s", head,
      node.cap, node.n, node.psleep, node.csleep, tostring(node.perr), tostring(node.cerr))
  elseif k == "semaphore" then out[#out + 1] = head .. " n=" .. node.n
  elseif k == "event" then out[#out + 1] = head .. " set after " .. node.d
  else out[#out + 1] = head end
  if node.body then out[#out + 1] = ind .. "  body:"; M.pretty(node.body, ind .. "    ", out) end
  if node.kid then M.pretty(node.kid, ind .. "  ", out) end
  for _, c in ipairs(node.kids or {}) do M.pretty(c, ind .. "  ", out) end
  return out
end

---------------------------------------------------------------------------
-- interpreter + invariant checks
---------------------------------------------------------------------------
local Fail = {}   -- a violated invariant (raised as {Fail, msg})

local st          -- per-run state
local exec

local function violation(msg)
  st.violations[#st.violations + 1] = msg
end

local function is_braid(e) return braid.is_error(e) end
local function is_cancel(e) return braid.is_cancelled(e) end
local function show(e)
  if type(e) == "table" and e.uerr then return "uerr#" .. e.uerr end
  local ok, s = pcall(tostring, e)
  return ok and s or "?"
end

-- One real I/O operation; a cancellation may hit it anywhere (the scope
-- then kills the process, closes the stream). Its results are checked.
local function io_step(kind, node)
  local want = "v" .. node.id
  local got
  if kind == "exec" then
    got = braid.exec({"echo", want}).stdout:gsub("\n$", "")
  elseif kind == "proc" then
    local p <close> = braid.process({"cat"})
    p:write(want .. "\n")
    got = p:read_line()
    p:close_stdin()
    if p:wait() ~= 0 then violation("cat #" .. node.id .. " exited non-zero") end
  elseif kind == "tcp" then
    -- A server of its own: an open server keeps the virtual clock still.
    local server = braid.tcp.listen(nil, 0, function(conn)
      for line in conn:lines() do conn:write(line .. "\n") end
    end)
    local c = braid.tcp.connect("127.0.0.1", server:port())
    c:write(want .. "\n")
    got = c:read_line()
    c:close()
    server:close()
  elseif kind == "http" then
    -- braid.http (libcurl on braid's loop) against a one-response server
    -- of braid's own; a cancellation takes the transfer off libcurl.
    local server = braid.tcp.listen(nil, 0, function(conn)
      repeat local line = conn:read_line() until line == "" or line == nil
      conn:write("HTTP/1.1 200 OK\r\nContent-Length: " .. #want ..
                 "\r\nConnection: close\r\n\r\n" .. want)
      conn:close()
    end)
    got = braid.http.get("http://127.0.0.1:" .. server:port() .. "/").body
    server:close()
  else
    local path = st.tmp .. "-" .. node.id
    st.files[#st.files + 1] = path
    braid.fs.write_file(path, want)
    got = braid.fs.read_file(path)
  end
  if got ~= want then violation(kind .. " #" .. node.id .. " got " .. tostring(got)) end
end

-- A worker step (add_worker): the results are checked; a cancellation may
-- hit it anywhere (the worker's scope, or <close>, stops the worker).
local WORKER_SRC <const> = [=[
  local braid = require "braid"
  return {
    echo = function(v) return v end,
    slow = function(v) braid.sleep(30) return v end,
  }
]=]

local function worker_step(mode, node)
  local want = "w" .. node.id
  local w <close> = braid.worker(WORKER_SRC, {grace = 1})
  if mode == 1 then
    local got = w:call("echo", want)
    if got ~= want then violation("worker #" .. node.id .. " got " .. tostring(got)) end
    return
  end
  -- the call's outcome is its task's result, so that its failure does not
  -- fail this step's scope
  local t = braid.spawn(function() return pcall(w.call, w, "slow", want) end)
  local got = w:call("echo", want)
  if got ~= want then violation("worker #" .. node.id .. " got " .. tostring(got)) end
  if mode == 2 then t:cancel() else w:close() end
  local ok, callok, e = pcall(t.await, t)
  if not t:done() then error(callok, 0) end   -- our own cancellation
  if ok and callok then
    violation("worker #" .. node.id .. ": a call " .. (mode == 2 and "cancelled" or "closed") .. " mid-call returned")
  elseif ok and mode == 3 and not is_cancel(e) and not (is_braid(e) and e.kind == "closed") then
    violation("worker #" .. node.id .. ": a call cut by close raised " .. show(e))
  end
end

-- Channel exchanges. Every value sent is a fresh string booked in st.xval:
-- "attempt" while its send is under way, then "sent" (the send returned;
-- for a select, it returned that case), or "kept" (the send raised --
-- closed, cancelled -- or the select committed another case or nothing:
-- the value stayed with its sender). A value whose sender was abandoned
-- mid-call stays "attempt": it may or may not have gone. Receipts are
-- counted in st.xgot; after the run, what is left in the channels is
-- drained (check_exchanges). Then every value is received or left exactly
-- once if "sent", never if "kept", at most once if "attempt"; of one
-- select's send cases at most one value goes; a value comes out of the
-- channel it was sent on; no value comes from nowhere.
local function x_new_value(ch)
  st.nx = st.nx + 1
  local v = "x" .. st.nx
  st.xval[v] = {state = "attempt", ch = ch}
  return v
end

local function x_received(v, ok, ch, label)
  if ok ~= true then
    if ok ~= false or v ~= nil then
      violation(label .. ": a receive returned " .. show(v) .. ", " .. show(ok))
    end
    return
  end
  local rec = st.xval[v]
  if not rec then violation(label .. ": received " .. show(v) .. ", which nobody sent")
  elseif rec.ch ~= ch then violation(label .. ": received " .. v .. " from another channel than it was sent on")
  end
  st.xgot[v] = (st.xgot[v] or 0) + 1
end

-- An operation raised: a closed channel is an outcome; a cancellation is
-- raised on (a stubborn operation first retries once, shielded, with a
-- timeout: a cleanup that waits, which its grace period may cut short);
-- anything else is a violation.
local x_op

local function x_raised(e, o, chans, label)
  if braid.is_error(e) and e.kind == "closed" then return end
  if is_cancel(e) then
    if o.stubborn then
      local retry = {cases = o.cases or {o.plain}, timeout = o.stubborn}
      braid.shield(x_op, retry, chans, label .. " (retry)")
    end
    error(e, 0)
  end
  violation(label .. " raised " .. show(e))
  error(e, 0)
end

function x_op(o, chans, label)
  if o.plain then
    local ch = chans[o.plain[1]]
    if o.plain[2] == "send" then
      local v = x_new_value(ch)
      local ok, e = pcall(ch.send, ch, v)
      st.xval[v].state = ok and "sent" or "kept"
      if not ok then x_raised(e, o, chans, label) end
    else
      local r = table.pack(pcall(ch.recv, ch))
      if not r[1] then return x_raised(r[2], o, chans, label) end
      x_received(r[2], r[3], ch, label)
    end
    return
  end
  local cases, vals, group = {default = o.default, timeout = o.timeout}, {}, {}
  for i, c in ipairs(o.cases) do
    local ch = chans[c[1]]
    if c[2] == "send" then
      vals[i] = x_new_value(ch)
      group[#group + 1] = vals[i]
      cases[i] = {ch, "send", vals[i]}
    else
      cases[i] = {ch, "recv"}
    end
  end
  st.xgroups[#st.xgroups + 1] = group
  local r = table.pack(pcall(braid.select, cases))
  local i = r[2]
  for k, v in pairs(vals) do
    st.xval[v].state = (r[1] and k == i) and "sent" or "kept"
  end
  if not r[1] then return x_raised(r[2], o, chans, label) end
  if i == nil then
    if not (o.default or o.timeout) then violation(label .. ": select returned nil without default or timeout") end
    if r.n ~= 2 then violation(label .. ": select returned nil and " .. (r.n - 2) .. " more values") end
  elseif math.type(i) ~= "integer" or not cases[i] then
    violation(label .. ": select returned " .. show(i) .. " for " .. #cases .. " cases")
  elseif cases[i][2] == "send" then
    if r.n ~= 2 then violation(label .. ": select's send case returned " .. (r.n - 1) .. " values") end
  else
    if r.n ~= 4 then violation(label .. ": select's receive case returned " .. (r.n - 1) .. " values") end
    x_received(r[3], r[4], cases[i][1], label)
  end
end

-- An exchange step: producers and consumers (each a task) run their
-- operations; whichever side ends first closes every channel, so that the
-- other cannot wait forever, and so does a watchdog when the two wait on
-- each other across different channels.
local function xchg_step(x, node)
  local chans = {}
  for i, cap in ipairs(x.caps) do
    chans[i] = braid.channel(cap)
    st.xchans[#st.xchans + 1] = chans[i]
  end
  local function close_all() for _, ch in ipairs(chans) do ch:close() end end
  local function side(lists, what)
    return function()
      st.tasks[#st.tasks + 1] = braid.current()
      local _ <close> = setmetatable({}, {__close = close_all})
      local fns = {}
      for k, ops in ipairs(lists) do
        local label = string.format("xchg #%d %s %d", node.id, what, k)
        fns[k] = function()
          st.tasks[#st.tasks + 1] = braid.current()
          for j, o in ipairs(ops) do
            x_op(o, chans, label .. " op " .. j)
            if o.sleep then braid.sleep(o.sleep) end
          end
        end
      end
      braid.gather(table.unpack(fns))
    end
  end
  braid.scope(function(s)
    local dog = s:spawn(function()
      st.tasks[#st.tasks + 1] = braid.current()
      braid.sleep(x.watch)
      close_all()
    end)
    braid.gather(side(x.prods, "producer"), side(x.cons, "consumer"))
    dog:cancel()
  end)
end

-- After the run: drains what is left in the exchanges' channels (in a run
-- of its own: they hold no waiter any more) and checks every value's fate.
local function check_exchanges()
  if #st.xchans == 0 then return end
  local left = {}
  braid.run(function()
    for _, ch in ipairs(st.xchans) do
      local n = ch:len()
      for _ = 1, n do
        local i, v, ok = braid.select{{ch, "recv"}, default = true}
        if i ~= 1 or ok ~= true then
          violation("a channel said it held " .. n .. " values but gave " .. show(i) .. ", " .. show(v) .. ", " .. show(ok))
          break
        end
        local rec = st.xval[v]
        if not rec then violation("left in a channel: " .. show(v) .. ", which nobody sent")
        elseif rec.ch ~= ch then violation("left in another channel than it was sent on: " .. v) end
        left[v] = (left[v] or 0) + 1
      end
      if ch:len() ~= 0 then violation("a channel still holds " .. ch:len() .. " values after its drain") end
    end
  end)
  for v, rec in pairs(st.xval) do
    local n = (st.xgot[v] or 0) + (left[v] or 0)
    if n > 1 then violation(v .. " was received " .. (st.xgot[v] or 0) .. " times and left " .. (left[v] or 0) .. " times")
    elseif rec.state == "sent" and n ~= 1 then violation(v .. " was sent and is lost")
    elseif rec.state == "kept" and n ~= 0 then violation(v .. " stayed with its sender but was delivered")
    end
  end
  for v in pairs(st.xgot) do
    if not st.xval[v] then violation("received " .. show(v) .. ", which nobody sent") end
  end
  for _, group in ipairs(st.xgroups) do
    local n = 0
    for _, v in ipairs(group) do n = n + (st.xgot[v] or 0) + (left[v] or 0) end
    if n > 1 then violation("one select delivered " .. n .. " of its send cases' values: " .. table.concat(group, ",")) end
  end
end

local function closer(tag)
  local c = {tag = tag, n = 0}
  st.closers[#st.closers + 1] = c
  return setmetatable({}, {__close = function() c.n = c.n + 1 end})
end

-- A scope-like construct (scope, timeout, shield, task body wrapper) keeps a
-- log of the failures of its body and of the tasks spawned into it.
local function new_sid(what)
  st.nsid = st.nsid + 1
  st.sids[st.nsid] = {what = what, fails = {}}
  return st.nsid
end

local function log_fail(sid, e)
  local rec = st.sids[sid]
  if not is_cancel(e) then rec.fails[#rec.fails + 1] = e end
end

local function earliest(deadlines)
  local m = math.huge
  for _, d in ipairs(deadlines) do if d < m then m = d end end
  return m
end

local function child_ctx(ctx, sid, deadline)
  local dl = ctx.deadlines
  if deadline then
    dl = {table.unpack(ctx.deadlines)}
    dl[#dl + 1] = deadline
  end
  return {sid = sid or ctx.sid, deadlines = dl}
end

-- Checks what a scope-like construct raised against its failure log: a
-- non-cancellation failure of its body or of a task spawned into it must
-- be raised, and the first one, unchanged (fail-fast). `own` is a predicate
-- for errors the construct may generate itself (its own timeout).
local function check_scope_outcome(sid, ok, e, label, own)
  local rec = st.sids[sid]
  local first = rec.fails[1]
  if first ~= nil then
    if ok then
      violation(label .. " returned normally although a member failed with " .. show(first))
    elseif not rawequal(e, first) then
      violation(label .. " raised " .. show(e) .. " but its first member failure was " .. show(first))
    end
  elseif not ok and not is_cancel(e) and not (own and own(e)) then
    violation(label .. " raised " .. show(e) .. " which no member raised")
  end
end

-- Checks a generated timeout error: the construct's own deadline (at
-- `mine`) must have passed, and no enclosing deadline was earlier.
local function check_own_timeout(label, mine, ctx)
  local now = braid.now()
  if now < mine - 1e-9 then
    violation(string.format("%s raised its timeout at %g before its deadline %g", label, now, mine))
  end
  local outer = earliest(ctx.deadlines)
  if outer < mine - 1e-9 then
    violation(string.format("%s raised a timeout (deadline %g) although an enclosing deadline %g was earlier",
      label, mine, outer))
  end
end

-- Runs node as the body of a new task: its own children are joined in a
-- braid.scope so that the moment this function returns or raises is the
-- moment the task ends. Logs the task's outcome under `parent_sid` and in
-- `endlog` (for groups).
local function task_body(node, ctx, parent_sid, endlog, idx)
  return function(...)
    local me = braid.current()
    st.tasks[#st.tasks + 1] = me
    if me:status() ~= "running" then violation("a starting task has status " .. me:status()) end
    local sid = new_sid("task for #" .. node.id)
    local c <close> = closer("task #" .. node.id)
    local r = table.pack(pcall(braid.scope, function()
      local r2 = table.pack(pcall(exec, node, child_ctx(ctx, sid)))
      if not r2[1] then log_fail(sid, r2[2]); error(r2[2], 0) end
      return table.unpack(r2, 2, r2.n)
    end))
    check_scope_outcome(sid, r[1], r[2], "task body of #" .. node.id)
    st.task_outcome[me] = r
    if r[1] then
      if endlog then endlog[#endlog + 1] = {idx = idx, ok = true, r = r, t = braid.now()} end
      return table.unpack(r, 2, r.n)
    end
    if parent_sid then log_fail(parent_sid, r[2]) end
    if endlog then endlog[#endlog + 1] = {idx = idx, ok = false, e = r[2], t = braid.now()} end
    error(r[2], 0)
  end
end

local function check_result_values(label, got, i, ent)
  if not ent then
    violation(label .. ": child " .. i .. " has a value but never ended ok")
  elseif not ent.ok then
    violation(label .. ": child " .. i .. " failed but a value was returned for it")
  elseif not rawequal(got, ent.r[2]) then
    violation(label .. ": child " .. i .. " value " .. show(got) .. " is not its result " .. show(ent.r[2]))
  end
end

local function by_index(endlog)
  local t = {}
  for _, ent in ipairs(endlog) do
    if t[ent.idx] then violation("child " .. ent.idx .. " ended twice") end
    t[ent.idx] = ent
  end
  return t
end

local function first_failure(endlog)
  for _, ent in ipairs(endlog) do
    if not ent.ok and not is_cancel(ent.e) then return ent.e end
  end
end

local function group(node, ctx)
  local k, opts, kids = node.kind, node.opts, node.kids
  local n = #kids
  local label = k .. " #" .. node.id
  local endlog = {}
  local deadline = opts.timeout and braid.now() + opts.timeout
  local cctx = child_ctx(ctx, nil, deadline)
  local fns = {}
  for i, kid in ipairs(kids) do fns[i] = task_body(kid, cctx, nil, endlog, i) end
  local copts = {}
  for key, v in pairs(opts) do copts[key] = v end
  local r
  if k == "map" then
    r = table.pack(pcall(braid.map, kids, function(kid, i) return fns[i]() end, copts))
  else
    fns[n + 1] = copts
    r = table.pack(pcall(braid[k], table.unpack(fns, 1, n + 1)))
  end
  local ends = by_index(endlog)
  if os.getenv("FUZZ_DEBUG") then
    local parts = {}
    for _, ent in ipairs(endlog) do
      parts[#parts + 1] = string.format("%d:%s@%g", ent.idx, ent.ok and "ok" or show(ent.e), ent.t)
    end
    io.stderr:write(string.format("[%s #%d ends: %s; outcome %s %s]\n", k, node.id,
      table.concat(parts, " "), tostring(r[1]), show(r[2])))
  end
  local ok, e = r[1], r[2]
  local own_timeout = not ok and braid.is_timeout(e)
  for _, ent in ipairs(endlog) do
    if not ent.ok and rawequal(ent.e, e) then own_timeout = false end
  end
  if own_timeout then
    if not deadline then violation(label .. " raised a timeout error it has no deadline for")
    else check_own_timeout(label, deadline, ctx) end
  end
  if (k == "gather" or k == "map") and not opts.settle then
    local first = first_failure(endlog)
    if ok then
      local vals = r
      if k == "map" then
        vals = r[2]
        if type(vals) ~= "table" or vals.n ~= n then
          violation(label .. " returned " .. show(vals) .. " instead of a list of " .. n)
          vals = {n = n}
        end
        vals = table.pack(true, table.unpack(vals, 1, n))
      end
      if vals.n - 1 ~= n then violation(label .. " returned " .. (vals.n - 1) .. " values for " .. n .. " children") end
      for i = 1, n do check_result_values(label, vals[i + 1], i, ends[i]) end
    elseif not is_braid(e) then
      if not rawequal(e, first) then
        violation(label .. " raised " .. show(e) .. " but the first failure among its children was " .. show(first))
      end
    elseif first ~= nil and not rawequal(e, first) and not is_cancel(e) and not own_timeout then
      violation(label .. " raised " .. show(e) .. " but the first failure among its children was " .. show(first))
    end
  elseif k == "gather" or k == "map" then   -- settle
    if ok then
      local outs = r
      if k == "map" then outs = table.pack(true, table.unpack(r[2], 1, r[2].n or 0)) end
      if outs.n - 1 ~= n then violation(label .. " (settle) returned " .. (outs.n - 1) .. " outcomes for " .. n .. " children") end
      for i = 1, n do
        local o, ent = outs[i + 1], ends[i]
        if type(o) ~= "table" then violation(label .. ": outcome " .. i .. " is not a table")
        elseif o.ok then check_result_values(label, o.value, i, ent)
        elseif ent and not ent.ok and rawequal(o.error, ent.e) then -- its own failure
        elseif braid.is_timeout(o.error) and deadline then        -- cut off
        elseif ent and ent.ok then
          violation(label .. ": child " .. i .. " succeeded but its outcome is a failure " .. show(o.error))
        else
          violation(label .. ": outcome " .. i .. " error " .. show(o.error) .. " is neither its failure nor the deadline")
        end
      end
    elseif not is_cancel(e) and not own_timeout then
      violation(label .. " (settle) raised " .. show(e))
    elseif own_timeout then
      violation(label .. " (settle) raised its timeout instead of returning outcomes")
    end
  elseif k == "race" then
    -- Members that end cancelled may have been cancelled by the race itself
    -- (its deadline, or its caller's cancellation): they do not decide it.
    -- One cancelled from elsewhere would, but then the race raises that
    -- cancellation. So when the race returns or raises a user error, the
    -- first member to end otherwise than cancelled decided it.
    local first
    for _, ent in ipairs(endlog) do
      if ent.ok or not is_cancel(ent.e) then first = ent; break end
    end
    if ok then
      if not first or not first.ok then
        violation(label .. " returned, but the first child to end " .. (first and "failed" or "does not exist"))
      elseif not rawequal(r[2], first.r[2]) or r.n ~= first.r.n then
        violation(label .. " returned " .. show(r[2]) .. " but the first child to end returned " .. show(first.r[2]))
      end
    elseif not is_braid(e) then
      if not first or first.ok or not rawequal(first.e, e) then
        violation(label .. " raised " .. show(e) .. " which is not the error of the first child to end")
      end
    end
  elseif k == "any" then
    if ok then
      local first
      for _, ent in ipairs(endlog) do if ent.ok then first = ent; break end end
      if not first then violation(label .. " returned but no child succeeded")
      elseif not rawequal(r[2], first.r[2]) then
        violation(label .. " returned " .. show(r[2]) .. " but the first success was " .. show(first.r[2]))
      end
    elseif not is_braid(e) then
      violation(label .. " raised a user error " .. show(e))
    elseif e.kind == "all_failed" then
      if type(e.errors) ~= "table" or #e.errors ~= n then
        violation(label .. " all_failed with " .. show(e.errors and #e.errors) .. " errors for " .. n)
      else
        for i = 1, n do
          local ent = ends[i]
          if ent and ent.ok then violation(label .. " all_failed although child " .. i .. " succeeded")
          elseif ent and not rawequal(ent.e, e.errors[i]) then
            violation(label .. " all_failed errors[" .. i .. "] is not child " .. i .. "'s error")
          end
        end
      end
    end
  end
  if ok then return table.unpack(r, 2, r.n) end
  error(e, 0)
end

local function uerr(node)
  local e = setmetatable({uerr = node.id}, {__tostring = function(s) return "uerr#" .. s.uerr end})
  st.raised[e] = true
  return e
end

function exec(node, ctx)
  local k = node.kind
  local c <close> = closer(k .. " #" .. node.id)
  if k == "leaf" then
    for _, s in ipairs(node.steps) do
      if s[1] == "sleep" then braid.sleep(s[2])
      elseif s[1] == "yield" then braid.yield()
      elseif s[1] == "io" then io_step(s[2], node)
      elseif s[1] == "worker" then worker_step(s[2], node)
      elseif s[1] == "xchg" then xchg_step(s[2], node)
      elseif s[1] == "closeerr" then   -- a cleanup that fails while unwinding
        local _ <close> = setmetatable({}, {__close = function(_, e)
          if e ~= nil then error(uerr(node), 0) end
        end})
        braid.sleep(s[2])
      elseif s[1] == "stubborn" then   -- swallows a cancellation, cleans up shielded
        local ok = pcall(braid.sleep, s[2])
        if not ok then braid.shield(braid.sleep, s[2] * 2) end
      else error(uerr(node)) end
    end
    return "v" .. node.id
  elseif k == "seq" then
    local last
    for _, kid in ipairs(node.kids) do last = exec(kid, ctx) end
    return last
  elseif k == "gather" or k == "race" or k == "any" or k == "map" then
    return group(node, ctx)
  elseif k == "timeout" or k == "shield" or k == "scope" then
    local sid = new_sid(k .. " #" .. node.id)
    local deadline = k == "timeout" and braid.now() + math.max(node.d, 0) or nil
    local cctx = child_ctx(ctx, sid, deadline)
    if k == "shield" then cctx.deadlines = {} end
    local function body(s)
      local c2 <close> = closer("body of #" .. node.id)
      if s then
        for _, kid in ipairs(node.kids) do s:spawn(task_body(kid, cctx, sid)) end
        if node.cancel_at then
          s:spawn(function()
            st.tasks[#st.tasks + 1] = braid.current()
            braid.sleep(node.cancel_at)
            s:cancel("fuzz")
          end)
        end
      end
      local r = table.pack(pcall(exec, node.body or node.kid, cctx))
      if not r[1] then log_fail(sid, r[2]); error(r[2], 0) end
      return table.unpack(r, 2, r.n)
    end
    local r
    if k == "timeout" then r = table.pack(pcall(braid.timeout, node.d, body))
    elseif k == "shield" then r = table.pack(pcall(braid.shield, body))
    else r = table.pack(pcall(braid.scope, body, {grace = node.grace})) end
    local label = k .. " #" .. node.id
    check_scope_outcome(sid, r[1], r[2], label, function(e)
      if k == "timeout" and braid.is_timeout(e) then
        check_own_timeout(label, deadline, ctx)
        return true
      end
    end)
    if r[1] then return table.unpack(r, 2, r.n) end
    error(r[2], 0)
  elseif k == "spawn_await" then
    local t = braid.spawn(task_body(node.kid, ctx, ctx.sid))
    if node.pre then braid.sleep(node.pre) end
    local r = table.pack(pcall(t.await, t))
    if not t:done() and (r[1] or not is_cancel(r[2])) then violation("spawn_await #" .. node.id .. ": await returned before the task ended") end
    local tr = st.task_outcome[t]
    if not r[1] and is_cancel(r[2]) then -- the caller may have been cancelled: level-triggered
    elseif tr and r[1] ~= tr[1] then
      violation("spawn_await #" .. node.id .. ": await " .. (r[1] and "returned" or "raised") .. " but the task " .. (tr[1] and "returned" or "raised"))
    elseif tr and not rawequal(r[2], tr[2]) and not is_cancel(r[2]) then
      violation("spawn_await #" .. node.id .. ": await gave " .. show(r[2]) .. " but the task ended with " .. show(tr[2]))
    end
    if r[1] then return table.unpack(r, 2, r.n) end
    error(r[2], 0)
  elseif k == "cancel_sibling" then
    local t = braid.spawn(task_body(node.kid, ctx, ctx.sid))
    local canceller = braid.spawn(function()
      st.tasks[#st.tasks + 1] = braid.current()
      braid.sleep(node.d)
      local was_done = t:done()
      local res = t:cancel("sibling")
      if res == was_done then violation("cancel_sibling #" .. node.id .. ": cancel returned " .. tostring(res) .. " for done=" .. tostring(was_done)) end
    end)
    local r = table.pack(pcall(t.await, t))
    if r[1] then return table.unpack(r, 2, r.n) end
    error(r[2], 0)
  elseif k == "pcall" then
    local r = table.pack(pcall(exec, node.kid, ctx))
    if r[1] then return table.unpack(r, 2, r.n) end
    return "caught"
  elseif k == "channel" then
    local ch = braid.channel(node.cap)
    local got = {}
    local label = "channel #" .. node.id
    local ok, e = pcall(braid.gather, function()
      st.tasks[#st.tasks + 1] = braid.current()
      local c2 <close> = setmetatable({}, {__close = function() ch:close() end})
      for i = 1, node.n do
        if node.perr == i then error(uerr(node)) end
        ch:send(i)
        braid.sleep(node.psleep)
      end
    end, function()
      st.tasks[#st.tasks + 1] = braid.current()
      local i = 0
      for v in ch:iter() do
        i = i + 1
        got[#got + 1] = v
        if node.cerr == i then error(uerr(node)) end
        braid.sleep(node.csleep)
      end
    end)
    for i, v in ipairs(got) do
      if v ~= i then violation(label .. ": received " .. table.concat(got, ",") .. " (lost, duplicated or reordered)") break end
    end
    if ok and #got ~= node.n then violation(label .. ": received " .. #got .. " of " .. node.n .. " values") end
    if ok then return #got end
    error(e, 0)
  elseif k == "semaphore" then
    local sem = braid.semaphore(node.n)
    local holding, peak = 0, 0
    local fns = {}
    for i, kid in ipairs(node.kids) do
      local inner = task_body(kid, ctx, nil)
      fns[i] = function()
        return sem:with(function()
          holding = holding + 1
          if holding > peak then peak = holding end
          local _ <close> = setmetatable({}, {__close = function() holding = holding - 1 end})
          return inner()
        end)
      end
    end
    fns[#fns + 1] = {settle = true}
    local r = table.pack(pcall(braid.gather, table.unpack(fns)))
    if peak > node.n then violation("semaphore #" .. node.id .. ": " .. peak .. " holders of " .. node.n) end
    if sem:count() ~= node.n then violation("semaphore #" .. node.id .. ": count " .. sem:count() .. " after all holders left, expected " .. node.n) end
    if r[1] then return #node.kids end
    error(r[2], 0)
  elseif k == "event" then
    -- waiters run their node once the event is set; the setter sets it on
    -- every path (a <close>), so nothing can wait forever.
    local ev = braid.event()
    local fns = {function()
      st.tasks[#st.tasks + 1] = braid.current()
      local _ <close> = setmetatable({}, {__close = function() ev:set() end})
      braid.sleep(node.d)
    end}
    for i, kid in ipairs(node.kids) do
      local inner = task_body(kid, ctx, nil)
      fns[i + 1] = function()
        ev:wait()
        if not ev:is_set() then violation("event #" .. node.id .. ": wait returned before set") end
        return inner()
      end
    end
    fns[#fns + 1] = {settle = true}
    local r = table.pack(pcall(braid.gather, table.unpack(fns)))
    if r[1] then
      if not ev:is_set() then violation("event #" .. node.id .. ": not set after its setter ended") end
      return #node.kids
    end
    error(r[2], 0)
  elseif k == "coroutine" then
    -- the nodes run inside a coroutine of the script's own: braid calls
    -- there suspend the whole task, and the generator's yields still work.
    local gen = coroutine.wrap(function()
      for _, kid in ipairs(node.kids) do coroutine.yield((exec(kid, ctx))) end
    end)
    local n, last = 0, nil
    for _ = 1, #node.kids do
      last = gen()
      n = n + 1
    end
    if n ~= #node.kids then violation("coroutine #" .. node.id .. ": generator yielded " .. n .. " times") end
    return last
  end
  error("unknown node " .. k)
end

local function registry_size()
  local n = 0
  -- integers under integer keys are luaL_ref's free list, not live refs
  for k, v in pairs(debug.getregistry()) do
    if not (math.type(k) == "integer" and math.type(v) == "integer") then n = n + 1 end
  end
  return n
end

-- Runs one seed; returns ok, report (a string) when an invariant failed.
function M.run_seed(seed)
  local tree = M.generate(seed)
  st = {violations = {}, closers = {}, sids = {}, nsid = 0, tasks = {},
        task_outcome = setmetatable({}, {__mode = "k"}), raised = {},
        tmp = M.tmp, files = {},
        nx = 0, xval = {}, xgot = {}, xchans = {}, xgroups = {}}
  local root_sid = new_sid("root")
  local ok, e = pcall(braid.run, function()
    st.tasks[#st.tasks + 1] = braid.current()
    local r = table.pack(pcall(exec, tree, {sid = root_sid, deadlines = {}}))
    if not r[1] then log_fail(root_sid, r[2]); error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end, {clock = "virtual"})
  check_scope_outcome(root_sid, ok, e, "braid.run")
  check_exchanges()
  if not ok and not is_braid(e) and not st.raised[e] then
    violation("braid.run raised " .. show(e) .. " which the workflow never raised")
  end
  if not ok and is_braid(e) and (e.kind == "deadlock" or e.kind == "usage") then
    violation("braid.run raised " .. e.kind .. ": " .. tostring(e.message))
  end
  for _, c in ipairs(st.closers) do
    if c.n ~= 1 then violation("<close> of " .. c.tag .. " ran " .. c.n .. " times") end
  end
  for _, t in ipairs(st.tasks) do
    local s = t:status()
    if not t:done() or (s ~= "ok" and s ~= "failed" and s ~= "cancelled") then
      violation("task " .. tostring(t.name) .. " has status " .. s .. " after the run")
    end
    local tr = st.task_outcome[t]
    if tr then
      local want = tr[1] and "ok" or (is_cancel(tr[2]) and "cancelled" or "failed")
      if s ~= want then violation("task " .. tostring(t.name) .. " ended " .. s .. ", its body's outcome says " .. want) end
      local rr = table.pack(t:result())
      if rr[1] ~= tr[1] or not rawequal(rr[2], tr[2]) then
        violation("task " .. tostring(t.name) .. ": result() does not match its outcome")
      end
    end
  end
  local live = braid.tasks()
  if #live ~= 0 then violation(#live .. " tasks alive after braid.run") end
  for _, f in ipairs(st.files) do os.remove(f) end
  local v = st.violations
  st = nil
  if #v == 0 then return true end
  local rep = {}
  for _, m in ipairs(v) do rep[#rep + 1] = "  " .. m end
  rep[#rep + 1] = "braid.run outcome: " .. (ok and "ok" or ("raised " .. show(e)))
  rep[#rep + 1] = "tree:"
  for _, l in ipairs(M.pretty(tree, "  ")) do rep[#rep + 1] = l end
  return false, table.concat(rep, "\n")
end

-- Runs count seeds from first; returns nil or the failing seed and report.
-- Also checks that the registry size and the heap return to their baseline.
-- Open file descriptors of this process (Linux), or nil.
local function fd_count()
  if not M.pid then return nil end
  local p = io.popen("ls /proc/" .. M.pid .. "/fd 2>/dev/null | wc -l")
  local n = p and tonumber(p:read("a"))
  if p then p:close() end
  return n
end

function M.run_many(first, count, progress)
  local base_reg, base_mem, base_fds
  local trace = os.getenv("FUZZ_TRACE")
  for seed = first, first + count - 1 do
    if trace then io.stderr:write("seed ", seed, "\n") end
    local ok, rep = M.run_seed(seed)
    if not ok then return seed, rep end
    collectgarbage("collect"); collectgarbage("collect")
    local reg, mem = registry_size(), collectgarbage("count")
    local fds = fd_count()
    -- A descriptor can be open for a while without being a leak (a file
    -- whose close waits in libuv's thread pool, the counting command's own
    -- pipe), longer on a loaded machine (CI saw 8 -> 9 for 0.25 s): a leak
    -- stays, so growth is looked at again, for up to 2 s, before it counts.
    for _ = 1, 40 do
      if not (fds and base_fds and fds > base_fds) then break end
      braid.run(function() braid.sleep(0.05) end)
      fds = fd_count()
    end
    if not base_reg then base_reg, base_mem, base_fds = reg, mem, fds
    else
      if fds and base_fds and fds > base_fds then
        return seed, string.format("  open descriptors grew from %d to %d", base_fds, fds)
      end
      if reg > base_reg + 2 then
        return seed, string.format("  registry grew from %d to %d entries", base_reg, reg)
      end
      if mem > base_mem + 512 then
        return seed, string.format("  heap grew from %.0f KB to %.0f KB", base_mem, mem)
      end
    end
    if progress and (seed - first + 1) % 500 == 0 then
      io.stderr:write(string.format("fuzz: %d seeds ok (registry %d, heap %.0f KB)\n", seed - first + 1, reg, mem))
    end
  end
end

if arg and arg[0] and arg[0]:match("fuzz%.lua$") then
  local first = tonumber(arg[1]) or 1
  local count = tonumber(arg[2]) or 100
  local seed, rep = M.run_many(first, count, true)
  if seed then
    print("FAIL seed " .. seed .. ": lua5.4 tools/fuzz.lua " .. seed .. " 1")
    print("  (LUA_CPATH='build/?.so;;' lua5.4 tools/fuzz.lua " .. seed .. " 1)")
    print(rep)
    os.exit(1)
  end
  print(string.format("fuzz: seeds %d..%d ok", first, first + count - 1))
end

return M
