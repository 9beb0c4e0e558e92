-- spec/fuzz_spec.lua: a bounded run of tools/fuzz.lua (`make fuzz` runs
-- many more seeds). Each batch reports its failing seed with the command
-- that reproduces it and the generated workflow tree.
local fuzz = dofile("tools/fuzz.lua")

describe("cancellation fuzzer", function()
  for batch = 0, 3 do
    local first, count = 1 + batch * 50, 50
    it(string.format("keeps every invariant for seeds %d..%d", first, first + count - 1), function()
      local seed, report = fuzz.run_many(first, count)
      if seed then
        error(string.format("seed %d failed (lua5.4 tools/fuzz.lua %d 1):\n%s", seed, seed, report), 0)
      end
    end)
  end
end)
