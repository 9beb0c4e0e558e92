local h = require "helper"

describe("examples/demo.lua", function()
  it("shows gather, a timeout and a fail-fast cancellation, and exits 0", function()
    local out, err, code = h.braid("examples/demo.lua")
    assert.are.equal(0, code, err)
    assert.matches("gather returned 5000, 4000, 5000", out)
    assert.matches("timeout raised: timed out after 0.1 s %(is_timeout = true%)", out)
    assert.matches("worker 1: connection closed during cancellation", out)
    assert.matches("gather raised: [^\n]*invalid config", out)
  end)
end)

describe("examples/pipeline.lua", function()
  it("processes every item through the workers", function()
    local out, err, code = h.braid("examples/pipeline.lua 30 3")
    assert.are.equal(0, code, err)
    assert.matches("processed 30 items with 3 workers: sum of squares = 9455", out)
    assert.matches("30/30 done", err)
  end)

  it("fails fast when an item fails, and exits 1", function()
    local out, err, code = h.braid("examples/pipeline.lua 40 4 --fail 7")
    assert.are.equal(1, code)
    assert.matches("pipeline failed: item 7 is corrupt", out)
    assert.is_nil(out:match("processed"))
  end)
end)

describe("examples/embed/app.c", function()
  it("answers queries from C under a deadline, stops a runaway script, and closes its loop", function()
    local app = os.getenv("BRAID_BIN"):gsub("braid$", "embed-app")
    local out, err, code = h.sh((os.getenv("BRAID_RUN_ENV") or "") .. " " .. app)
    assert.are.equal(0, code, err)
    assert.matches("workflow returned:\nuser=28\norders=42\n" ..
                   "failed: no record for 'missing'\nfailed: [^\n]*timed out", out)
    assert.matches("app: query 'slow-report' cancelled", out, 1, true)
    assert.matches("runaway failed:\ninstruction budget exceeded", out, 1, true)
    assert.matches("heartbeat ran on while scripts ran", out, 1, true)
    assert.matches("app: loop closed cleanly", out, 1, true)
  end)
end)

describe("examples/traced_workflow.lua", function()
  it("runs, and its trace's critical path goes through the map's limit and the failed upload", function()
    local path = os.tmpname()
    local out, err, code = h.braid("--virtual-time --trace " .. path .. " examples/traced_workflow.lua")
    assert.are.equal(0, code, err)
    assert.matches("publish failed: [^\n]*mirror: 503", out)
    out, err, code = h.braid("trace " .. path)
    os.remove(path)
    assert.are.equal(0, code, err)
    local cp = out:match("critical path[^\n]*\n(.-)\n\n")
    local steps = {}
    for l in cp:gmatch("[^\n]+") do
      steps[#steps + 1] = l:match("^%s*[%d.]+ %a+%s+%+[%d.]+ %a+%s+(.*)$")
    end
    assert.are.same({"fetch assets #4: sleep 2", "compile io #6: sleep 0.8",
                     "compile cli #7: sleep 0.5", "compile docs #8: sleep 0.3",
                     "examples/traced_workflow.lua #1: await task 10 (cut short by a cancellation)",
                     "integration tests (retry, cached) #11: sleep 0.7",
                     "upload to mirror #13: sleep 0.3"}, steps)
  end)
end)
