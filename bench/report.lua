-- bench/report.lua: the RESULT lines every Lua bench program prints
-- (w_floor, w_braid, w_cqueues, w_luv), loaded with dofile from beside it.
-- samples[0] is round 0, the first in a fresh process (cold); the median is
-- of rounds 1..n (warm), when there are any.
local M = {}

function M.median(t)
  table.sort(t)
  local m = #t // 2
  if #t % 2 == 1 then return t[m + 1] end
  return (t[m] + t[m + 1]) / 2
end

function M.result(w, impl, key, v)
  io.write(string.format("RESULT %s %s %s=%.3f\n", w, impl, key, v))
end

function M.report(w, impl, key, samples)
  if #samples > 0 then M.result(w, impl, key, M.median(samples)) end
  M.result(w, impl, "cold_" .. key, samples[0])
end

return M
