-- bench/w_workers_luv.lua: luv's thread work queue round trip (uv.new_work:
-- a small argument to libuv's thread pool and back), sequential, as
-- braid's rt_us. Stock lua5.4 with Debian's lua-luv.
local uv = require "luv"
local N = tonumber(arg[1]) or 20000
local i, t0, c0 = 0, nil, nil
local work
work = uv.new_work(function(x) return x end, function(x)
  assert(x == i, "bad echo")
  if i == 0 then t0, c0 = uv.hrtime(), os.clock() end
  i = i + 1
  if i > N then
    print("rt_us", (uv.hrtime() - t0) / 1e3 / N)
    print("rt_cpu_us", (os.clock() - c0) * 1e6 / N)
    return
  end
  work:queue(i)
end)
work:queue(0)
uv.run()
