-- w7_braid.lua: W7 in braid (build/braid bench/w7_braid.lua ...):
-- `get URL N INFLIGHT ROUNDS`: N GETs of URL, INFLIGHT at a time, with
-- braid.map; `stream URL PATH ROUNDS`: the body to a file with output.
local braid = braid or require "braid"
local mode, url = arg[1], arg[2]

local function median(t)
  table.sort(t)
  return t[#t // 2 + 1]
end

local function main()
  local r = {}
  if mode == "get" then
    local n, inflight, rounds = tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
    local items = {}
    for i = 1, n do items[i] = i end
    for k = 1, rounds do
      local t0 = braid.now()
      braid.map(items, function()
        local res = braid.http.get(url)
        assert(res.status == 200 and #res.body == 1024)
      end, {limit = inflight})
      r[k] = braid.now() - t0
    end
    print(string.format("RESULT W7 braid get_ms=%.1f", median(r) * 1e3))
  else
    local path, rounds = arg[3], tonumber(arg[4])
    for k = 1, rounds do
      local t0 = braid.now()
      braid.http.get(url, {output = path})
      local f = io.open(path, "rb")
      local size = f:seek("end")
      f:close()
      r[k] = size / 1e6 / (braid.now() - t0)
    end
    print(string.format("RESULT W7 braid stream_MBps=%.0f", median(r)))
  end
end

if braid.current and braid.current() then main() else braid.run(main) end
