-- bench/w_workers.lua: braid's workers (issue 20). Run by bench/workers with
-- the runner: `build/braid bench/w_workers.lua [items] [round_trips]`.
-- Prints "key value" lines:
--   inline_s    2,000 items hashed in the main thread, plain Lua (1 core)
--   w1_s, w2_s  the same through braid.map(list, "hash", {workers = n})
--   rt_us       one worker:call round trip with a small argument
--   rt_cpu_us   the CPU time (both threads) of one
--   *_cpu_s     process CPU time over the same span (os.clock)
local braid = require "braid"

-- A SHA-256-like compression over a 1 KiB message per item: 32-bit words
-- in Lua integers, 64 rounds per 64-byte block.
local HASH <const> = [[
local K = {}
for i = 1, 64 do K[i] = math.floor(math.abs(math.sin(i)) * 2^32) & 0xffffffff end
local function rotr(x, n) return ((x >> n) | (x << (32 - n))) & 0xffffffff end
local function block(h, w)
  for i = 17, 64 do
    local a, b = w[i - 15], w[i - 2]
    local s0 = rotr(a, 7) ~ rotr(a, 18) ~ (a >> 3)
    local s1 = rotr(b, 17) ~ rotr(b, 19) ~ (b >> 10)
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & 0xffffffff
  end
  local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
  for i = 1, 64 do
    local S1 = rotr(e, 6) ~ rotr(e, 11) ~ rotr(e, 25)
    local ch = (e & f) ~ (~e & g)
    local t1 = (hh + S1 + ch + K[i] + w[i]) & 0xffffffff
    local S0 = rotr(a, 2) ~ rotr(a, 13) ~ rotr(a, 22)
    local maj = (a & b) ~ (a & c) ~ (b & c)
    local t2 = (S0 + maj) & 0xffffffff
    hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & 0xffffffff, c, b, a,
                              (t1 + t2) & 0xffffffff
  end
  h[1] = (h[1] + a) & 0xffffffff; h[2] = (h[2] + b) & 0xffffffff
  h[3] = (h[3] + c) & 0xffffffff; h[4] = (h[4] + d) & 0xffffffff
  h[5] = (h[5] + e) & 0xffffffff; h[6] = (h[6] + f) & 0xffffffff
  h[7] = (h[7] + g) & 0xffffffff; h[8] = (h[8] + hh) & 0xffffffff
end
local function hash(i)
  local h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}
  local w = {}
  for blk = 0, 15 do
    for j = 1, 16 do w[j] = (i * 2654435761 + blk * 40503 + j) & 0xffffffff end
    block(h, w)
  end
  return string.format("%08x%08x", h[1], h[2])
end
return {hash = hash, echo = function(x) return x end}
]]

local ITEMS = tonumber(arg and arg[1]) or 2000
local TRIPS = tonumber(arg and arg[2]) or 20000

local function timed(fn)
  local t0, c0 = braid.now(), os.clock()
  local r = fn()
  return braid.now() - t0, os.clock() - c0, r
end

local items = {}
for i = 1, ITEMS do items[i] = i end
local fns = load(HASH, "=hash")()

local inline_s, inline_cpu, ref = timed(function()
  local out = {}
  for i = 1, ITEMS do out[i] = fns.hash(i) end
  return out
end)
print("inline_s", inline_s)
print("inline_cpu_s", inline_cpu)

for _, n in ipairs({1, 2}) do
  local pool <close> = braid.pool(n, HASH)
  pool:map({1, 2}, "hash")                      -- threads up and warm
  local s, cpu, r = timed(function() return pool:map(items, "hash") end)
  for i = 1, ITEMS do assert(r[i] == ref[i], "hash mismatch") end
  print("w" .. n .. "_s", s)
  print("w" .. n .. "_cpu_s", cpu)
end

local w <close> = braid.worker(HASH)
w:call("echo", 1)
local s, cpu = timed(function()
  for i = 1, TRIPS do assert(w:call("echo", i) == i) end
end)
print("rt_us", s / TRIPS * 1e6)
print("rt_cpu_us", cpu / TRIPS * 1e6)
