-- lua/trace.lua: `braid trace FILE [--svg OUT]`, compiled into the runner.
-- Reads a trace braid wrote (engine/core/trace.c: Chrome trace-event JSON,
-- one event per line) and prints what decided the run's time: the critical
-- path, the top waits, the slowest tasks and every cancellation with its
-- origin; with --svg, draws the timeline as a static SVG (tasks as rows,
-- waits coloured by kind) that needs no browser.
local USAGE = "usage: braid trace FILE [--svg OUT.svg]"

---------------------------------------------------------------------------
-- Reading: lua-cjson when it is installed, else a small decoder that reads
-- what braid writes (any valid JSON value; no surrogate pairs needed). A
-- trace whose writer was killed (kill -9) ends mid-way: no closing `]}`,
-- perhaps half an event. The small decoder reads such a file up to its last
-- complete event when asked to (`partial`), as Perfetto does.

-- pure_decode(s, partial) -> value, cut. With partial, a text that ends
-- inside the value (cut off) gives what came before and cut = true: the
-- arrays and objects open there, each array without the element it ended
-- in. Raises "bad JSON at byte N: ..." on anything else.
local function pure_decode(s, partial)
  local esc = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
               n = "\n", r = "\r", t = "\t"}
  local pos, cut = 1, false
  local value
  local EOF = {}   -- raised when the text ends inside a value
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local function err(what)
    -- at the end, or on a last token cut short ("tru", "-"): the text
    -- ended, it did not go wrong
    if partial and s:find("^[%w.+-]*$", pos) then error(EOF, 0) end
    error("bad JSON at byte " .. pos .. ": " .. what, 0)
  end
  local function str()
    local out, i = {}, pos + 1
    while true do
      local j = s:find('["\\]', i)
      if not j then pos = #s + 1; err("unterminated string") end
      out[#out + 1] = s:sub(i, j - 1)
      if s:sub(j, j) == '"' then pos = j + 1; return table.concat(out) end
      local c = s:sub(j + 1, j + 1)
      if c == "u" then
        local hex = s:match("^%x%x%x%x", j + 2)
        if not hex then
          if j + 5 > #s then pos = #s + 1 end
          err("bad escape")
        end
        out[#out + 1] = utf8.char(tonumber(hex, 16))
        i = j + 6
      else
        if c == "" then pos = #s + 1 end
        out[#out + 1] = esc[c] or err("bad escape")
        i = j + 2
      end
    end
  end
  -- the members of object t
  local function members(t)
    while true do
      ws()
      if s:sub(pos, pos) ~= '"' then err("key expected") end
      local k = str()
      ws()
      if s:sub(pos, pos) ~= ":" then err("':' expected") end
      pos = pos + 1
      t[k] = value()
      if cut then return end
      ws()
      local c = s:sub(pos, pos); pos = pos + 1
      if c == "}" then return end
      if c ~= "," then pos = pos - 1; err("',' or '}' expected") end
    end
  end
  -- the elements of array t
  local function items(t)
    while true do
      local v = value()
      if cut then return end   -- v is incomplete: leave it out
      t[#t + 1] = v
      ws()
      local c = s:sub(pos, pos); pos = pos + 1
      if c == "]" then return end
      if c ~= "," then pos = pos - 1; err("',' or ']' expected") end
    end
  end
  -- fill(t), and t; partial, an end of the text inside it ends t there
  -- (an array leaves out the element it ended in)
  local function within(fill, t)
    if not partial then fill(t); return t end
    local ok, e = pcall(fill, t)
    if not ok then
      if e ~= EOF then error(e, 0) end
      cut = true
    end
    return t
  end
  value = function()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return t end
      return within(members, t)
    elseif c == "[" then
      local t = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return t end
      return within(items, t)
    elseif c == '"' then
      return str()
    elseif s:find("^true", pos) then pos = pos + 4; return true
    elseif s:find("^false", pos) then pos = pos + 5; return false
    elseif s:find("^null", pos) then pos = pos + 4; return nil
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      local n = num and tonumber(num)
      if not n then err("value expected") end
      pos = pos + #num
      return n
    end
  end
  local ok, v = pcall(value)
  if not ok then
    if v == EOF then error("bad JSON at byte " .. #s + 1 .. ": unexpected end", 0) end
    error(v, 0)
  end
  if not cut then
    ws()
    if pos <= #s then error("bad JSON at byte " .. pos .. ": trailing text", 0) end
  end
  return v, cut
end

local decode, null
do
  local ok, cjson = pcall(require, "cjson")
  if ok and not os.getenv("BRAID_TRACE_PURE") then   -- (the spec tries both)
    decode, null = cjson.decode, cjson.null
  else
    decode = pure_decode
  end
end

---------------------------------------------------------------------------
-- The model: tasks with their slices, instants and relations.

-- Says which event n is, for a message.
local function which(e, n)
  return ("event %d (ph %s, tid %s)"):format(n,
    type(e.ph) == "string" and ('"' .. e.ph:sub(1, 10) .. '"') or "?",
    math.type(e.tid) and ("%.0f"):format(e.tid) or "?")
end

-- Checks t[k] (prefix: how the message names t) of event e, number n:
-- nil if it is a `want` ("table" said "an object"), or nil and not
-- required; else the message. A JSON null (cjson's) is dropped: nil.
local function field(e, n, t, k, want, required, prefix)
  local v = t[k]
  if type(v) == want then return nil end
  local expected = want == "table" and "an object" or "a " .. want
  if v == nil or v == null then
    t[k] = nil
    if not required then return nil end
    return ("%s: '%s%s' is missing, %s expected"):format(which(e, n),
      prefix or "", k, expected)
  end
  local shown = type(v) == "string" and ('"' .. v:sub(1, 40) .. '"')
                or type(v) == "table" and "an array or object"
                or tostring(v)
  return ("%s: '%s%s' is %s, %s expected"):format(which(e, n), prefix or "",
    k, shown, expected)
end

-- Checks the fields of event n that the model uses: nil, or a message
-- naming the event and the field.
local function check_event(e, n)
  if type(e) ~= "table" then
    return ("event %d is a %s, an object expected"):format(n, type(e))
  end
  local ph = e.ph
  local msg = field(e, n, e, "ph", "string", true) or
              field(e, n, e, "tid", "number")
  if msg then return msg end
  local timed = ph == "B" or ph == "E" or ph == "i"
  local name = e.name
  msg = field(e, n, e, "ts", "number", timed) or
        field(e, n, e, "name", "string", ph == "B" or ph == "M" or ph == "i") or
        field(e, n, e, "args", "table")
  if msg then return msg end
  if ph == "M" and name == "thread_name" then
    msg = field(e, n, e, "args", "table", true) or
          field(e, n, e.args, "name", "string", true, "args.") or
          field(e, n, e.args, "parent", "number", false, "args.")
  elseif ph == "i" and (name == "spawn" or name == "cancel" or
                        name == "cancelled" or name == "end") then
    msg = field(e, n, e, "args", "table", true)
    if msg then return msg end
    local a = e.args
    if name == "spawn" then
      msg = field(e, n, a, "task", "number", true, "args.")
    elseif name == "cancelled" then
      msg = field(e, n, a, "from", "number", false, "args.")
    elseif name == "end" then
      msg = field(e, n, a, "status", "string", false, "args.")
    else
      msg = field(e, n, a, "by", "string", false, "args.") or
            field(e, n, a, "reason", "string", false, "args.")
    end
  end
  return msg
end

-- load(path) -> model, [note] | nil, message: the note says that the
-- trace was cut off, and where it was read up to.
local function load(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text, rerr = f:read("a")   -- nil, "Is a directory" for one
  f:close()
  if not text then return nil, path .. ": " .. tostring(rerr) end
  local ok, doc = pcall(decode, text)
  local cut
  if not ok then   -- cut off? only the small decoder reads on
    local ok2, doc2, cut2 = pcall(pure_decode, text, true)
    if not (ok2 and cut2 and type(doc2) == "table" and
            type(doc2.traceEvents) == "table") then
      return nil, path .. ": not a trace (" .. tostring(doc) .. ")"
    end
    doc, cut = doc2, true
  end
  text = nil   -- (the decoded events are enough to hold)
  if type(doc) ~= "table" or type(doc.traceEvents) ~= "table" then
    return nil, path .. ": not a trace (no traceEvents)"
  end
  local events = doc.traceEvents
  for n = 1, #events do
    local msg = check_event(events[n], n)
    if msg then return nil, path .. ": bad event: " .. msg end
  end
  local note = cut and ("%s: cut off (its writer did not finish it): read up "
    .. "to its last complete event, event %d"):format(path, #events)
  local tasks, order, instants, cancel_from, spawner = {}, {}, {}, {}, {}
  local t_end = 0
  local function task(tid)
    local t = tasks[tid]
    if not t then
      t = {tid = tid, slices = {}, open = {}, name = "task " .. tid}
      tasks[tid] = t
      order[#order + 1] = t
    end
    return t
  end
  for _, e in ipairs(doc.traceEvents) do
    local tid = math.tointeger(e.tid) or 0
    if e.ts and e.ts > t_end then t_end = e.ts end
    if e.ph == "M" then
      if e.name == "thread_name" and tid ~= 0 then
        local t = task(tid)
        t.name = e.args.name
        t.parent = math.tointeger(e.args.parent)
      end
    elseif tid ~= 0 or e.ph == "i" then
      local t = task(tid)
      t.first = t.first or e.ts
      if e.ph == "B" then
        t.open[#t.open + 1] = {name = e.name, ts = e.ts}
      elseif e.ph == "E" then
        local s = table.remove(t.open)
        if s then
          s.dur = e.ts - s.ts
          s.cancelled = e.args and e.args.woke == "cancel"
          t.slices[#t.slices + 1] = s
        end
      elseif e.ph == "i" then
        instants[#instants + 1] = e
        if e.name == "end" then t.status = e.args.status end
        if e.name == "spawn" then
          local child = math.tointeger(e.args.task)
          if child then spawner[child] = tid end
        end
        if e.name == "cancelled" then
          cancel_from[tid .. "@" .. e.ts] = math.tointeger(e.args.from)
        end
      end
      if e.ts then t.last = math.max(t.last or e.ts, e.ts) end
    end
  end
  tasks[0] = nil
  local live = {}
  for _, t in ipairs(order) do
    if t.tid ~= 0 then
      live[#live + 1] = t
      t.spawner = spawner[t.tid]
      t.status = t.status or "ok"
      t.children = {}
    end
  end
  for _, t in ipairs(live) do
    local p = t.parent and tasks[t.parent]
    if p then p.children[#p.children + 1] = t end
  end
  table.sort(live, function(a, b) return a.tid < b.tid end)
  local other = type(doc.otherData) == "table" and doc.otherData or {}
  return {tasks = tasks, list = live, instants = instants, t_end = t_end,
          cancel_from = cancel_from,
          clock = type(other.clock) == "string" and other.clock or "real"}, note
end

local function secs(us)
  local s = us / 1e6
  if s == 0 then return "0 s" end
  if s < 0.001 then return string.format("%.0f us", us) end
  if s < 1 then return string.format("%.1f ms", s * 1000) end
  return string.format("%.3f s", s)
end

-- The index of t's last slice that ended by time `at`, or 0. A track's
-- slices do not overlap, so they are in time order (the order they ended);
-- the search runs on the suffix minima of their ends (t.ends, made once),
-- which are in order whatever the file holds, so it finds what a scan from
-- the end would: the suffix minimum at i is within `at` exactly when some
-- slice from i on ended by then.
local function last_before(t, at)
  local ends = t.ends
  if not ends then
    ends = {}
    local low = math.huge
    for i = #t.slices, 1, -1 do
      local s = t.slices[i]
      local e = s.ts + s.dur
      if e < low then low = e end
      ends[i] = low
    end
    t.ends = ends
  end
  local lo, hi, limit = 1, #ends, at + 1e-6   -- the answer is in [lo-1, hi]
  while lo <= hi do
    local mid = (lo + hi) // 2
    if ends[mid] <= limit then lo = mid + 1 else hi = mid - 1 end
  end
  return hi
end

-- The first index in list (sorted by .last) whose last is at least x, or
-- #list + 1.
local function first_from(list, x)
  local lo, hi = 1, #list + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    if list[mid].last < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- p's children that ended, by when they ended; at a tie, those not
-- cancelled first, then in the order of p.children: so the first of a run
-- of equal ends is the one a scan of p.children keeping the `later` one
-- would keep. Also, as p.ended_late, those of them whose first event came
-- before their last. Made once per task.
local function by_end(p)
  if not p.by_last then
    local list, rank = {}, {}
    for k, c in ipairs(p.children) do
      if c.last then list[#list + 1] = c; rank[c] = k end
    end
    table.sort(list, function(a, b)
      if a.last ~= b.last then return a.last < b.last end
      local ca, cb = a.status == "cancelled", b.status == "cancelled"
      if ca ~= cb then return cb end
      return rank[a] < rank[b]
    end)
    local late = {}
    for _, c in ipairs(list) do
      if c.first and c.first < c.last then late[#late + 1] = c end
    end
    p.by_last, p.ended_late = list, late
  end
  return p.by_last, p.ended_late
end

-- The critical path: from the root's end, backwards, the chain of waits
-- that decided the total time. A wait for another task (await task N) or
-- for members (its members, braid.gather of N...) continues in the task
-- that ended last within it; any other wait (sleep, exec, a socket...) is
-- a step of the path; a task's start continues in its parent, at the
-- spawn. Returned in time order. Each step costs O(log n) on indexes made
-- once per task (a scan of the children per step made long traces
-- quadratic).
local function critical_path(m)
  local root = m.list[1]
  local path = {}
  if not root then return path end
  local t, i, guard = root, #root.slices, 0
  while t and guard < 1000000 do
    guard = guard + 1
    if i < 1 then
      -- its start: a task the scheduler started when a sibling ended
      -- (map's limit) continues in that sibling (one that ended as it
      -- started and started before it; at a tie one not cancelled, the
      -- first), any other in its parent
      local p = t.parent and m.tasks[t.parent]
      if not p or not t.first then break end
      local sib
      if t.spawner == 0 then
        local _, late = by_end(p)
        local c = late[first_from(late, t.first)]
        if c and c.last == t.first then sib = c end   -- never t: t.first == c.last
      end
      if sib then t, i = sib, #sib.slices
      else t, i = p, last_before(p, t.first) end
    else
      local s = t.slices[i]
      local e = s.ts + s.dur
      local target
      if s.cancelled then   -- cut short: the cancellation's origin decided
        local from = m.cancel_from[t.tid .. "@" .. e]
        if from and from ~= t.tid then target = m.tasks[from] end
      elseif s.name ~= "run" and s.dur > 0 then
        local n = s.name:match("^await task (%d+)$")
        if n then
          target = m.tasks[tonumber(n)]
        elseif s.name == "its members" or s.name:match("^braid%.%a+ of %d+$") then
          -- the child that ended last by e, if it ended at s.ts or after
          local list = by_end(t)
          local limit = e + 1e-6
          local lo, hi = 1, #list   -- the last index ending by limit
          while lo <= hi do
            local mid = (lo + hi) // 2
            if list[mid].last <= limit then lo = mid + 1 else hi = mid - 1 end
          end
          local c = list[hi]
          if c and c.last >= s.ts then target = list[first_from(list, c.last)] end
        end
      end
      if s.dur > 0 then
        path[#path + 1] = {task = t, name = s.name, ts = s.ts, dur = s.dur,
                           via = target, cancelled = s.cancelled}
      end
      if target and target ~= t then
        t, i = target, last_before(target, e)
      else
        i = i - 1
      end
    end
  end
  local out = {}
  for k = #path, 1, -1 do out[#out + 1] = path[k] end
  return out
end

local function summary(m, path)
  local w = {}
  local function p(...) w[#w + 1] = string.format(...) end
  p("braid trace: %d tasks, %s (%s clock)", #m.list, secs(m.t_end), m.clock)
  p("")
  p("critical path (the chain of waits that decided the total time):")
  local steps = {}
  for _, s in ipairs(path) do
    if not s.via then steps[#steps + 1] = s end
  end
  if #steps <= 30 then
    for _, s in ipairs(steps) do
      p("  %10s  +%-10s %s: %s%s", secs(s.ts), secs(s.dur), s.task.name, s.name,
        s.cancelled and " (cut short by a cancellation)" or "")
    end
  else   -- a long chain: what it is made of, biggest first
    local by, list = {}, {}
    for _, s in ipairs(steps) do
      local k = s.task.name .. ": " .. s.name
      local a = by[k]
      if not a then a = {key = k, n = 0, total = 0}; by[k] = a; list[#list + 1] = a end
      a.n, a.total = a.n + 1, a.total + s.dur
    end
    table.sort(list, function(a, b)
      if a.total ~= b.total then return a.total > b.total end
      return a.key < b.key
    end)
    p("  %d steps; by task and wait, biggest first:", #steps)
    for i = 1, math.min(15, #list) do
      p("  %12s  %6dx  %s", secs(list[i].total), list[i].n, list[i].key)
    end
    if #list > 15 then p("  ... and %d more", #list - 15) end
  end
  if #steps == 0 then p("  (no wait took time)") end
  p("")
  local waits, keys = {}, {}
  for _, t in ipairs(m.list) do
    for _, s in ipairs(t.slices) do
      if s.name ~= "run" then
        local a = waits[s.name]
        if not a then a = {name = s.name, total = 0, n = 0}; waits[s.name] = a; keys[#keys + 1] = a end
        a.total, a.n = a.total + s.dur, a.n + 1
      end
    end
  end
  table.sort(keys, function(a, b)
    if a.total ~= b.total then return a.total > b.total end
    return a.name < b.name
  end)
  p("top waits by total time:")
  for i = 1, math.min(10, #keys) do
    local a = keys[i]
    p("  %12s  %6dx  %s", secs(a.total), a.n, a.name)
  end
  if #keys == 0 then p("  (none)") end
  p("")
  local slow = {}
  for _, t in ipairs(m.list) do
    slow[#slow + 1] = {task = t, life = (t.last or 0) - (t.first or 0)}
  end
  table.sort(slow, function(a, b)
    if a.life ~= b.life then return a.life > b.life end
    return a.task.tid < b.task.tid
  end)
  p("slowest tasks:")
  for i = 1, math.min(10, #slow) do
    local s = slow[i]
    p("  %12s  %s (%s)", secs(s.life), s.task.name, s.task.status)
  end
  p("")
  p("cancellations:")
  local n = 0
  for i, e in ipairs(m.instants) do
    if e.name == "cancel" then
      n = n + 1
      local who = m.tasks[math.tointeger(e.tid)]
      local reached = {}
      for j = i + 1, #m.instants do
        local r = m.instants[j]
        if r.name == "cancel" then break end
        if r.name == "cancelled" and r.args.from == e.tid then
          local rt = m.tasks[math.tointeger(r.tid)]
          reached[#reached + 1] = rt and rt.name or ("task " .. r.tid)
        end
      end
      local by = e.args.by
      local origin = by == "failure" and ("the failure of " .. (who and who.name or "?"))
        or by == "timeout" and ("a timeout in " .. (who and who.name or "?"))
        or by == "task" and ("task " .. (who and who.name or "?"))
        or by
      p("  %10s  by %s%s: reached %s", secs(e.ts), origin,
        e.args.reason and (" (" .. e.args.reason .. ")") or "",
        #reached > 0 and table.concat(reached, ", ") or "no other task")
    end
  end
  if n == 0 then p("  (none)") end
  return table.concat(w, "\n") .. "\n"
end

---------------------------------------------------------------------------
-- The picture.

local function xml(s)
  return (s:gsub("[<>&\"]", {["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;",
                             ['"'] = "&quot;"}))
end

local KINDS = {   -- the first matching pattern colours a slice
  {"^run$", "#4caf50", "running"},
  {"^sleep", "#b0bec5", "sleep"},
  {"^exec", "#ff9800", "process"},
  {"^proc", "#ff9800", nil},
  {"^tcp", "#2196f3", "network"},
  {"^dns", "#2196f3", nil},
  {"^channel", "#9c27b0", "channel"},
  {"^select", "#9c27b0", nil},
  {"^await", "#fff176", "awaiting tasks"},
  {"^its members", "#fff176", nil},
  {"^braid%.", "#fff176", nil},
  {"", "#90a4ae", "other"},
}

local function colour(name)
  for _, k in ipairs(KINDS) do
    if name:find(k[1]) then return k[2] end
  end
end

local function svg(m, path)
  local W, LABEL, ROW, TOP = 1000, 220, 22, 40
  local span = m.t_end > 0 and m.t_end or 1
  local rows = {}
  local function walk(t, depth)
    rows[#rows + 1] = {task = t, depth = depth}
    for _, c in ipairs(t.children) do walk(c, depth + 1) end
  end
  for _, t in ipairs(m.list) do
    if not (t.parent and m.tasks[t.parent]) then walk(t, 0) end
  end
  local H = TOP + #rows * ROW + 60
  local o = {}
  local function x(ts) return LABEL + (ts / span) * (W - LABEL - 10) end
  o[#o + 1] = string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
    .. 'viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">', W, H, W, H)
  o[#o + 1] = string.format('<rect width="%d" height="%d" fill="white"/>', W, H)
  o[#o + 1] = string.format('<text x="8" y="18" font-size="13" font-weight="bold">%s</text>',
    xml(string.format("braid trace: %d tasks, %s (%s clock)", #m.list, secs(m.t_end), m.clock)))
  for i = 0, 4 do   -- the time axis
    local ts = span * i / 4
    o[#o + 1] = string.format('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>',
      x(ts), TOP - 6, x(ts), TOP + #rows * ROW)
    o[#o + 1] = string.format('<text x="%.1f" y="%d" fill="#666" text-anchor="middle">%s</text>',
      x(ts), TOP - 9, xml(secs(ts)))
  end
  local on_path = {}
  for _, s in ipairs(path) do on_path[s.task.tid .. "@" .. s.ts .. s.name] = true end
  for i, r in ipairs(rows) do
    local y = TOP + (i - 1) * ROW
    local t = r.task
    local label = t.name
    if #label > 30 then label = label:sub(1, 29) .. "…" end
    o[#o + 1] = string.format('<text x="%d" y="%d">%s</text>', 8 + r.depth * 10, y + 15, xml(label))
    for _, s in ipairs(t.slices) do
      local x0, x1 = x(s.ts), x(s.ts + s.dur)
      local crit = on_path[t.tid .. "@" .. s.ts .. s.name]
      o[#o + 1] = string.format('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"%s>'
        .. '<title>%s</title></rect>', x0, y + 4, math.max(x1 - x0, 0.5), ROW - 8,
        colour(s.name), crit and ' stroke="#d32f2f" stroke-width="1.5"' or "",
        xml(string.format("%s: %s (%s)", t.name, s.name, secs(s.dur))))
      if x1 - x0 > 60 and s.name ~= "run" then
        o[#o + 1] = string.format('<text x="%.1f" y="%d" font-size="9">%s</text>',
          x0 + 3, y + 14, xml(s.name:sub(1, math.floor((x1 - x0) / 5.5))))
      end
    end
    if t.status ~= "ok" then
      o[#o + 1] = string.format('<circle cx="%.1f" cy="%d" r="4" fill="%s"><title>%s</title></circle>',
        x(t.last or 0), y + ROW // 2, t.status == "failed" and "#d32f2f" or "#ff7043",
        xml(t.name .. " " .. t.status))
    end
  end
  local lx, ly = 8, TOP + #rows * ROW + 25
  for _, k in ipairs(KINDS) do
    if k[3] then
      o[#o + 1] = string.format('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>'
        .. '<text x="%d" y="%d">%s</text>', lx, ly, k[2], lx + 16, ly + 10, xml(k[3]))
      lx = lx + 30 + #k[3] * 6
    end
  end
  o[#o + 1] = string.format('<rect x="%d" y="%d" width="12" height="12" fill="none" '
    .. 'stroke="#d32f2f" stroke-width="1.5"/><text x="%d" y="%d">critical path</text>',
    lx, ly, lx + 16, ly + 10)
  o[#o + 1] = "</svg>"
  return table.concat(o, "\n") .. "\n"
end

---------------------------------------------------------------------------

return function(...)
  local args = {...}
  local file, svg_out
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--svg" then
      svg_out = args[i + 1]
      if not svg_out then io.stderr:write("braid trace: --svg needs a file\n", USAGE, "\n"); return 2 end
      i = i + 1
    elseif a == "-h" or a == "--help" then
      io.write(USAGE, "\n")
      return 0
    elseif file == nil and a:sub(1, 1) ~= "-" then
      file = a
    else
      io.stderr:write("braid trace: unexpected '", a, "'\n", USAGE, "\n")
      return 2
    end
    i = i + 1
  end
  if not file then io.stderr:write(USAGE, "\n"); return 2 end
  local m, err = load(file)
  if not m then io.stderr:write("braid trace: ", err, "\n"); return 1 end
  if err then io.stderr:write("braid trace: ", err, "\n") end   -- cut off
  local path = critical_path(m)
  if svg_out then
    local f, e = io.open(svg_out, "wb")
    if not f then io.stderr:write("braid trace: ", e, "\n"); return 1 end
    f:write(svg(m, path))
    f:close()
  else
    io.write(summary(m, path))
  end
  return 0
end
