-- w_json.lua: braid.json against lua-cjson on a ~1 MB mixed document
-- (objects of integers, floats, strings with escapes and UTF-8, booleans,
-- nulls, nested arrays), then 100,000 random floats: the best of `rounds`
-- runs of encode and of decode, each timed with os.clock over `reps` calls.
--   LUA_CPATH="build/?.so;;" lua5.4 bench/w_json.lua [rounds] [reps]
local braid = require "braid"
local cjson = require("cjson").new()
local rounds, reps = tonumber(arg[1]) or 7, tonumber(arg[2]) or 10

local function document()
  local items = {}
  for i = 1, 4000 do
    items[i] = {
      id = 1000000000 + i, price = i * 1.25 + 0.01, ratio = i / 7,
      name = "item " .. i, note = "line one\nline \"two\"\ttab é€😀",
      tags = {"a", "bb", "ccc", i % 2 == 0}, ok = i % 3 == 0,
      missing = braid.json.null, nested = {x = i, y = {-i, i * 0.5}},
    }
  end
  return {items = items, count = #items, title = "w_json"}
end

local function best(f)
  local b = math.huge
  for _ = 1, rounds do
    local t0 = os.clock()
    for _ = 1, reps do f() end
    b = math.min(b, (os.clock() - t0) / reps)
  end
  return b
end

local doc = document()
local btext, ctext = braid.json.encode(doc), cjson.encode(doc)
local be = best(function() braid.json.encode(doc) end)
local ce = best(function() cjson.encode(doc) end)
local bd = best(function() braid.json.decode(btext) end)
local cd = best(function() cjson.decode(ctext) end)
print(("document: braid.json %d bytes, cjson %d bytes"):format(#btext, #ctext))
print(("encode: braid.json %.2f ms, cjson %.2f ms, braid/cjson %.2fx"):format(be * 1e3, ce * 1e3, be / ce))
print(("decode: braid.json %.2f ms, cjson %.2f ms, braid/cjson %.2fx"):format(bd * 1e3, cd * 1e3, bd / cd))

-- The worst case for braid.json: floats that need 16 or 17 digits (cjson
-- writes 14, which do not read back).
local floats = {}
for i = 1, 100000 do floats[i] = math.random() end
local bf, cf = braid.json.encode(floats), cjson.encode(floats)
be = best(function() braid.json.encode(floats) end)
ce = best(function() cjson.encode(floats) end)
bd = best(function() braid.json.decode(bf) end)
cd = best(function() cjson.decode(cf) end)
print(("100k random floats (braid.json %d bytes, cjson %d): encode %.2fx, decode %.2fx (braid/cjson)")
  :format(#bf, #cf, be / ce, bd / cd))
