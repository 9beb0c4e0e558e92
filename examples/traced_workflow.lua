-- traced_workflow.lua: a release workflow to look at, not just to run:
-- record it, then read what decided its time.
--
--   build/braid --virtual-time --trace run.json examples/traced_workflow.lua
--   build/braid trace run.json                   # critical path, waits, ...
--   build/braid trace run.json --svg run.svg     # the timeline as a picture
--   (or open run.json in ui.perfetto.dev)
--
-- Dependencies download in parallel, a build compiles the units two at a
-- time (one compiler run is a real child process), the tests run under a
-- deadline -- the slow suite is cut off and retried once, faster -- and the
-- mirror upload fails, which cancels its sibling upload (fail-fast). The
-- work is pretend (sleeps), so on the virtual clock the run is instant and
-- the same every time.

local function step(name, seconds)
  braid.current().name = name
  braid.sleep(seconds)
  return name
end

local function download(dep)
  return function() return step("fetch " .. dep.name, dep.secs) end
end

local deps = {{name = "libfoo", secs = 1.2}, {name = "libbar", secs = 0.4},
              {name = "assets", secs = 2.0}}
braid.gather(download(deps[1]), download(deps[2]), download(deps[3]))

-- compile: four units, two at a time; one is a real compiler run
local units = {{"core", 1.5}, {"io", 0.8}, {"cli", 0.5}, {"docs", 0.3}}
braid.map(units, function(u)
  braid.current().name = "compile " .. u[1]
  if u[1] == "cli" then braid.exec({"true"}) end
  braid.sleep(u[2])
end, {limit = 2})

-- tests: the integration suite overruns its 1 s budget the first time
local function suite(name, seconds)
  return braid.spawn(step, name, seconds)
end
local unit = suite("unit tests", 0.6)
local ok = pcall(braid.timeout, 1.0, function()
  suite("integration tests", 3.0):await()
end)
if not ok then
  suite("integration tests (retry, cached)", 0.7):await()
end
unit:await()

-- publish: the mirror fails after 0.3 s, which cancels the main upload
local published, err = pcall(braid.gather,
  function() step("upload to main", 2.0) end,
  function() step("upload to mirror", 0.3); error("mirror: 503 Service Unavailable") end)
print(published and "published" or "publish failed: " .. tostring(err))
