-- parallel_commands.lua: runs shell commands concurrently, a few at a time,
-- each under a timeout.
--
--   build/braid examples/parallel_commands.lua [options] ['cmd' ...]
--
-- Options: --limit N (commands running at once, default 3), --timeout S
-- (seconds per command, default 2), --keep-going (run every command even
-- when some fail, then print a summary table). Without commands it runs a
-- built-in demo list. By default the first failure (a non-zero exit, a
-- signal, a timeout) stops the rest: their processes are killed. Any
-- failure makes the script exit 1. Uses the global `braid` of the runner.

local DEMO <const> = {
  "echo hello from $$; sleep 0.2",
  "sleep 0.5; echo slow but fine",
  "printf 'two\\nlines\\n'",
  "ls /no/such/directory",
  "sleep 30",
  "exit 3",
  "echo last",
}

local limit, timeout, keep_going = 3, 2, false
local cmds = {}
local args = table.pack(...)
local i = 1
while i <= args.n do
  local a = args[i]
  if a == "--limit" then
    i = i + 1
    limit = math.tointeger(tonumber(args[i]))
    if not limit then error("--limit needs a whole number", 0) end
  elseif a == "--timeout" then
    i = i + 1
    timeout = tonumber(args[i]) or error("--timeout needs seconds", 0)
  elseif a == "--keep-going" then
    keep_going = true
  else
    cmds[#cmds + 1] = a
  end
  i = i + 1
end
if #cmds == 0 then cmds = DEMO end

local t0 = braid.now()
local rows = {}   -- rows[i] = {status, seconds}, once command i has ended

-- Runs command i; prints its output; raises when it did not succeed.
local function run(cmd, i)
  local started = braid.now()
  local ok, r = pcall(braid.exec, {"sh", "-c", cmd}, {timeout = timeout})
  local secs = braid.now() - started
  if not ok and braid.is_cancelled(r) then
    rows[i] = {"cancelled", secs}
    error(r)   -- a cancellation is passed on, never swallowed
  end
  local status
  if ok then
    status = r.signal or ("exit " .. r.code)
  elseif braid.is_timeout(r) then
    status = "timeout"
  else
    status = (r.kind or "error") .. " " .. (r.code or "")
  end
  rows[i] = {status, secs}
  local out = ok and (r.stdout .. r.stderr) or ""
  for line in out:gmatch("[^\n]+") do
    print(("[%d] %s"):format(i, line))
  end
  print(("[%d] %-30s %-10s %5.2f s  (at %.2f s)"):format(
    i, cmd:sub(1, 30), status, secs, braid.now() - t0))
  if status ~= "exit 0" then
    error(("command %d (%s): %s"):format(i, cmd, status), 0)
  end
  return status
end

local function summary()
  local failed = 0
  print(("\n%-3s %-36s %-10s %s"):format("#", "command", "status", "seconds"))
  for i, cmd in ipairs(cmds) do
    local row = rows[i] or {"not run", 0}
    if row[1] ~= "exit 0" then failed = failed + 1 end
    print(("%-3d %-36s %-10s %7.2f"):format(i, cmd:sub(1, 36), row[1], row[2]))
  end
  return failed
end

print(("running %d commands, %d at a time, %g s each%s\n"):format(
  #cmds, limit, timeout, keep_going and ", keep going" or ", fail-fast"))

if keep_going then
  braid.map(cmds, run, {limit = limit, settle = true})
  local failed = summary()
  print(("\n%d of %d failed, %.2f s in all"):format(
    failed, #cmds, braid.now() - t0))
  -- Raising (not os.exit) lets the runner reap stopped children first.
  if failed > 0 then
    error(("%d of %d commands failed"):format(failed, #cmds), 0)
  end
else
  local ok, err = pcall(braid.map, cmds, run, {limit = limit})
  if not ok then
    print(("\nstopped after the first failure: %s"):format(tostring(err)))
    summary()
    error("stopped after the first failure", 0)
  end
  print(("\nall %d succeeded in %.2f s"):format(#cmds, braid.now() - t0))
end
