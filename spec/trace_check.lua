-- spec/trace_check.lua: reads a trace file braid wrote and checks it
-- against the trace-event format, structurally: every event well-formed,
-- every begin closed by an end on its track, timestamps never going back
-- on a track, each flow's two ends on existing slices, every task track
-- named, and a parent's track sorted before its children's. Returns the
-- decoded trace and an index of it for further assertions.
local cjson = require "cjson"

local M = {}

local PH = {B = true, E = true, X = true, i = true, s = true, f = true,
            M = true, C = true}

-- M.load(path) -> trace (decoded), or raises with what is wrong.
function M.load(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  local ok, doc = pcall(cjson.decode, text)
  assert(ok, "trace is not valid JSON: " .. tostring(doc))
  assert(type(doc.traceEvents) == "table", "no traceEvents array")
  return doc
end

-- M.check(doc) -> index: {tracks = {[tid] = {name, parent, sort, events}},
-- slices = {{tid, name, ts, dur}...}, instants = {...}}; raises on the
-- first violation, naming the event.
function M.check(doc)
  local tracks, slices, instants, flows = {}, {}, {}, {}
  local open, last = {}, {}
  local function track(tid)
    local t = tracks[tid]
    if not t then t = {events = {}}; tracks[tid] = t end
    return t
  end
  for n, e in ipairs(doc.traceEvents) do
    local where = "event " .. n .. " (" .. cjson.encode(e) .. ")"
    assert(PH[e.ph], where .. ": unknown ph")
    assert(e.pid == 1 and type(e.tid) == "number" and e.tid % 1 == 0,
           where .. ": pid/tid")
    local tid = e.tid
    if e.ph == "M" then
      local t = track(tid)
      if e.name == "thread_name" then
        assert(type(e.args.name) == "string", where .. ": name")
        assert(t.parent == nil or t.parent == e.args.parent,
               where .. ": renamed with another parent")
        t.name, t.parent = e.args.name, e.args.parent   -- the last wins
      elseif e.name == "thread_sort_index" then
        t.sort = e.args.sort_index
      end
    else
      assert(type(e.ts) == "number" and e.ts >= 0, where .. ": ts")
      assert(e.ts >= (last[tid] or 0), where .. ": time went back on track "
             .. tid .. " (after " .. tostring(last[tid]) .. ")")
      last[tid] = e.ts
      local st = open[tid] or {}
      open[tid] = st
      table.insert(track(tid).events, e)
      if e.ph == "B" then
        assert(type(e.name) == "string", where .. ": B without a name")
        st[#st + 1] = e
      elseif e.ph == "E" then
        local b = assert(table.remove(st), where .. ": E without a B")
        slices[#slices + 1] = {tid = tid, name = b.name, ts = b.ts,
                               dur = e.ts - b.ts, args = e.args}
      elseif e.ph == "X" then
        assert(type(e.dur) == "number" and e.dur >= 0, where .. ": dur")
        slices[#slices + 1] = {tid = tid, name = e.name, ts = e.ts, dur = e.dur}
      elseif e.ph == "i" then
        assert(type(e.name) == "string", where .. ": instant name")
        instants[#instants + 1] = e
      elseif e.ph == "s" or e.ph == "f" then
        -- bound to the slice around it: one open, or the zero-length one
        -- written just before it on this track
        local evs = track(tid).events
        local prev = evs[#evs - 1]
        assert(#st > 0 or (prev and prev.ph == "X" and prev.ts == e.ts),
               where .. ": flow end outside any slice")
        local fl = flows[e.id] or {}
        flows[e.id] = fl
        assert(fl[e.ph] == nil, where .. ": flow id used twice")
        fl[e.ph] = e
      elseif e.ph == "C" then
        for k, v in pairs(e.args) do
          assert(type(v) == "number" and v >= 0, where .. ": counter " .. k)
        end
      end
    end
  end
  for tid, st in pairs(open) do
    assert(#st == 0, "track " .. tid .. ": " .. #st .. " slice(s) never "
           .. "ended (first: " .. (st[1] and st[1].name or "?") .. ")")
  end
  for id, fl in pairs(flows) do
    assert(fl.s and fl.f, "flow " .. id .. " has only one end")
    assert(fl.s.ts <= fl.f.ts, "flow " .. id .. " goes back in time")
    assert(tracks[fl.s.tid] and tracks[fl.f.tid], "flow " .. id)
  end
  for tid, t in pairs(tracks) do
    if tid ~= 0 then
      assert(t.name, "track " .. tid .. " has no name")
      assert(t.sort, "track " .. tid .. " has no sort index")
      if t.parent and t.parent ~= 0 then
        local p = assert(tracks[t.parent], "track " .. tid ..
                         ": parent track " .. t.parent .. " missing")
        assert(p.sort < t.sort, "track " .. tid .. " sorts before its parent")
      end
    end
  end
  return {tracks = tracks, slices = slices, instants = instants, flows = flows}
end

-- M.named(ix, pattern) -> the tid of the one track whose name matches.
function M.named(ix, pattern)
  local found
  for tid, t in pairs(ix.tracks) do
    if t.name and t.name:match(pattern) then
      assert(found == nil, "two tracks match " .. pattern)
      found = tid
    end
  end
  return found
end

-- M.instants(ix, name, [tid]) -> the instants called name (on tid).
function M.instants(ix, name, tid)
  local r = {}
  for _, e in ipairs(ix.instants) do
    if e.name == name and (tid == nil or e.tid == tid) then r[#r + 1] = e end
  end
  return r
end

-- M.slices(ix, pattern, [tid]) -> slices whose name matches (on tid).
function M.slices(ix, pattern, tid)
  local r = {}
  for _, s in ipairs(ix.slices) do
    if s.name:match(pattern) and (tid == nil or s.tid == tid) then
      r[#r + 1] = s
    end
  end
  return r
end

return M
