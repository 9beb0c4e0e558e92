-- json_spec.lua: braid.json, braid's own codec (engine/io/json.c), as
-- docs/API.md ("braid.json") describes it: numbers exactly both ways,
-- strict RFC 8259 decoding, UTF-8 checked, raw table access, bounded
-- nesting, kind "json" errors that say where.
local braid = require "braid"
local h = require "helper"
local json = braid.json

-- The error a call raised (it must fail).
local function fails(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return e
end

-- A braid.Error of kind "json" from decoding text, at byte pos.
local function decode_fails(text, pos, pattern)
  local e = fails(json.decode, text)
  assert.are.equal("json", e.kind, tostring(e.message))
  assert.are.equal(pos, e.position, e.message)
  assert.matches("^braid%.json%.decode: .* at character " .. pos .. "$", e.message)
  if pattern then assert.matches(pattern, e.message) end
  return e
end

local function encode_fails(v, pattern)
  local e = fails(json.encode, v)
  assert.are.equal("json", e.kind, tostring(e.message))
  assert.matches("^braid%.json%.encode: ", e.message)
  if pattern then assert.matches(pattern, e.message) end
  return e
end

-- v encoded and decoded again: the same number, of the same subtype.
local function round_trip(v)
  local back = json.decode(json.encode(v))
  assert.are.equal(math.type(v), math.type(back), json.encode(v))
  assert.is_true(v == back, json.encode(v) .. " read back as " .. tostring(back))
  return back
end

describe("braid.json numbers", function()
  it("encodes integers exactly and floats in the fewest digits that read back", function()
    assert.are.equal("9223372036854775807", json.encode(math.maxinteger))
    assert.are.equal("-9223372036854775808", json.encode(math.mininteger))
    assert.are.equal("123456789012345", json.encode(123456789012345))
    assert.are.equal("9007199254740993", json.encode((1 << 53) + 1))
    assert.are.equal("0.1", json.encode(0.1))
    assert.are.equal("0.3333333333333333", json.encode(1 / 3))
    assert.are.equal("0.30000000000000004", json.encode(0.1 + 0.2))
    assert.are.equal("1.5", json.encode(1.5))
    assert.are.equal("1e+308", json.encode(1e308))
    assert.are.equal("[1,2.5,-3]", json.encode({1, 2.5, -3}))
  end)

  it("writes an integral float with .0, so that it decodes as a float", function()
    assert.are.equal("3.0", json.encode(3.0))
    assert.are.equal("-0.0", json.encode(-0.0))
    assert.are.equal("9007199254740992.0", json.encode(2.0 ^ 53))
    assert.are.equal("1e+20", json.encode(1e20))
    assert.are.equal("float", math.type(json.decode(json.encode(3.0))))
  end)

  it("round-trips integers and floats exactly", function()
    round_trip(math.maxinteger)
    round_trip(math.mininteger)
    round_trip((1 << 53) + 1)
    round_trip(0)
    round_trip(-1)
    for _, x in ipairs{0.1, 1 / 3, 1e308, 5e-324, 2.2250738585072014e-308,
                       -1.7976931348623157e308, 2.0 ^ 53, 2.0 ^ 63, 123.456,
                       1e-7, 3.0, 0.1 + 0.2} do
      round_trip(x)
    end
    local z = round_trip(-0.0)
    assert.are.equal(-math.huge, 1 / z)
    local many = {}
    for i = 1, 1000 do many[i] = math.random() * 10.0 ^ math.random(-300, 300) end
    assert.are.same(many, json.decode(json.encode(many)))
  end)

  it("decodes integers as integers and the rest as floats", function()
    local function is(text, v, ty)
      local got = json.decode(text)
      assert.are.equal(ty, math.type(got), text)
      assert.is_true(got == v, text .. " gave " .. tostring(got))
    end
    is("1", 1, "integer")
    is("-1", -1, "integer")
    is("0", 0, "integer")
    is("9007199254740993", (1 << 53) + 1, "integer")
    is("9223372036854775807", math.maxinteger, "integer")
    is("-9223372036854775808", math.mininteger, "integer")
    is("9223372036854775808", 2.0 ^ 63, "float")      -- past lua_Integer
    is("-9223372036854775809", -2.0 ^ 63, "float")
    is("1.0", 1.0, "float")
    is("1e2", 100.0, "float")
    is("1E-2", 0.01, "float")
    is("2.5e+3", 2500.0, "float")
    is("-0.0", 0.0, "float")
    is("5e-324", 5e-324, "float")
    is("1e-400", 0.0, "float")                          -- underflow: 0
    local z = json.decode("-0")
    assert.are.equal("float", math.type(z))
    assert.are.equal(-math.huge, 1 / z)
    assert.are.equal("integer", math.type(json.decode("[1]")[1]))
    assert.are.equal("integer", math.type(json.decode('{"id": 123456789012345}').id))
    assert.are.equal(123456789012345, json.decode('{"id": 123456789012345}').id)
  end)

  it("refuses NaN and the infinities both ways", function()
    encode_fails(0 / 0, "NaN")
    encode_fails(math.huge, "infinity")
    encode_fails({a = {1, -math.huge}}, "at value%.a%[2%]$")
    decode_fails("[1e400]", 2, "out of range")
    decode_fails("-1e999", 1, "out of range")
    decode_fails("NaN", 1)
    decode_fails("[Infinity]", 2)
    decode_fails("-Infinity", 2)
  end)

  it("refuses what RFC 8259 does not allow in a number", function()
    decode_fails("01", 1, "leading zero")
    decode_fails("-01", 1, "leading zero")
    decode_fails("+1", 1)
    decode_fails(".5", 1)
    decode_fails("1.", 3)
    decode_fails("1.e5", 3)
    decode_fails("1e", 3)
    decode_fails("1e+", 4)
    decode_fails("-", 2)
    decode_fails("0x10", 2, "end of the text")
    decode_fails("1 2", 3, "end of the text")
  end)
end)

describe("braid.json strings", function()
  it("escapes quotes, backslashes and control characters, and never '/'", function()
    assert.are.equal([["a\"b\\c/d"]], json.encode('a"b\\c/d'))
    assert.are.equal([["\n\r\t\b\f\u0000\u001f\u0001"]],
                     json.encode("\n\r\t\b\f\0\31\1"))
    assert.are.equal('"\127"', json.encode("\127"))
    assert.are.equal('"é😀"', json.encode("é😀"))
  end)

  it("round-trips every byte below 0x80 and \\u0000", function()
    local t = {}
    for i = 0, 127 do t[#t + 1] = string.char(i) end
    local s = table.concat(t)
    assert.are.equal(s, json.decode(json.encode(s)))
    assert.are.equal("a\0b", json.decode(json.encode("a\0b")))
    assert.are.equal("a\0b", json.decode('"a\\u0000b"'))
    assert.are.same({["k\0"] = "v\0"}, json.decode(json.encode({["k\0"] = "v\0"})))
  end)

  it("decodes every escape, \\u with surrogate pairs as UTF-8", function()
    assert.are.equal("\"\\/\b\f\n\r\t", json.decode([["\"\\\/\b\f\n\r\t"]]))
    assert.are.equal("é", json.decode([["\u00e9"]]))
    assert.are.equal("é", json.decode([["\u00E9"]]))
    assert.are.equal("€", json.decode([["\u20ac"]]))
    assert.are.equal("😀", json.decode([["\ud83d\ude00"]]))
    assert.are.equal("\u{10FFFF}", json.decode([["\udbff\udfff"]]))
    assert.are.equal("x😀y", json.decode('"x😀y"'))
  end)

  it("refuses lone surrogates, bad escapes and raw control characters", function()
    decode_fails([["ab\ud83d"]], 4, "lone high surrogate")
    decode_fails([["\ud83dx"]], 2, "lone high surrogate")
    decode_fails([["\ud83d\u0041"]], 2, "lone high surrogate")
    decode_fails([["\ude00"]], 2, "lone low surrogate")
    decode_fails([["\u12"]], 2, "four hex digits")
    decode_fails([["\u12G4"]], 2, "four hex digits")
    decode_fails([["\x41"]], 2, "invalid escape")
    decode_fails([["\'"]], 2, "invalid escape")
    decode_fails('"a\nb"', 3, "control character")
    decode_fails('"a\0b"', 3, "control character")
    decode_fails('"\t"', 2, "control character")
    decode_fails('"abc', 5, "unterminated string %(it begins at character 1%)")
    decode_fails('["abc\\', 7, "unterminated")
    decode_fails("'a'", 1)
  end)

  it("refuses invalid UTF-8 in values and keys, both ways", function()
    -- each with the byte where it goes wrong: stray continuation bytes,
    -- overlong forms, a surrogate, past U+10FFFF, sequences cut short
    local bad = {{"\xff", 1}, {"\xfe\xff", 1}, {"a\x80", 2}, {"\xc0\xaf", 1},
                 {"\xe0\x80\xaf", 1}, {"\xed\xa0\x80", 1},
                 {"\xf4\x90\x80\x80", 1}, {"\xc3", 1}, {"ab\xe2\x82", 3}}
    for _, c in ipairs(bad) do
      local b, at = c[1], c[2]
      encode_fails(b, "invalid UTF%-8 %(byte " .. at .. " of the string%) at value$")
      encode_fails({k = b}, "invalid UTF%-8 %(byte " .. at .. " of the string%) at value%.k$")
      encode_fails({[b] = 1}, "invalid UTF%-8 %(byte " .. at .. " of the key%)")
      decode_fails('"' .. b .. '"', 1 + at, "invalid UTF%-8")
      decode_fails('{"' .. b .. '": 1}', 2 + at, "invalid UTF%-8")
    end
    encode_fails("ok\xffno", "%(byte 3 of the string%) at value$")
    decode_fails('["ok\xffno"]', 5)
  end)
end)

describe("braid.json tables", function()
  it("encodes arrays, objects and the empty table as documented", function()
    assert.are.equal("[1,2]", json.encode({1, 2}))
    assert.are.equal("{}", json.encode({}))
    assert.are.equal('{"a":1}', json.encode({a = 1}))
    assert.are.equal('[[],{}]', json.encode({{1, {}}, {}}):gsub("%[1,{}%]", "[]"))
    assert.are.equal('{"1":"a","3":"c"}', (json.encode({[1] = "a", [3] = "c"})
      :gsub('^{("3":"c"),("1":"a")}$', "{%2,%1}")))
    assert.are.same({["1"] = "a", ["3"] = "c"}, json.decode(json.encode({[1] = "a", [3] = "c"})))
    assert.are.same({["0"] = 1}, json.decode(json.encode({[0] = 1})))
    assert.are.same({["-5"] = 1}, json.decode(json.encode({[-5] = 1})))
    assert.are.same({["2.5"] = 1}, json.decode(json.encode({[2.5] = 1})))
    assert.are.same({["1"] = 1, x = 2}, json.decode(json.encode({1, x = 2})))
    assert.are.equal("null", json.encode(json.null))
    assert.are.equal("null", json.encode(nil))
    assert.are.equal("[true,false,null]", json.encode({true, false, json.null}))
  end)

  it("decodes any value at the top level, with whitespace around", function()
    assert.are.equal(5, json.decode(" \t\r\n5 \n"))
    assert.are.equal("s", json.decode('"s"'))
    assert.is_true(json.decode("true"))
    assert.is_false(json.decode("false"))
    assert.are.equal(json.null, json.decode("null"))
    assert.are.same({}, json.decode("[]"))
    assert.are.same({}, json.decode(" { } "))
    assert.are.same({a = {1, json.null, {b = false}}, c = "d"},
                    json.decode('{"a":[1,null,{"b":false}],"c":"d"}'))
  end)

  it("keeps the last of keys seen twice", function()
    assert.are.same({a = 2}, json.decode('{"a":1,"a":2}'))
  end)

  it("refuses text that is not JSON, naming the character", function()
    decode_fails("", 1, "expected a value but found the end of the text")
    decode_fails("   ", 4)
    decode_fails("[1,]", 4, "expected a value but found ']'")
    decode_fails("[1 2]", 4, "expected ',' or ']' but found '2'")
    decode_fails('{"a" 1}', 6, "expected ':'")
    decode_fails('{"a":1,}', 8, "expected a string %(a key%)")
    decode_fails("{a:1}", 2, "expected a string %(a key%)")
    decode_fails('{"a":1 "b":2}', 8, "expected ',' or '}'")
    decode_fails("[1", 3, "the end of the text")
    decode_fails("[]]", 3, "expected the end of the text but found ']'")
    decode_fails("tru", 1)
    decode_fails("nul", 1)
    decode_fails("truex", 5)
    decode_fails("\xef\xbb\xbf1", 1, "byte 0xEF")
    decode_fails("[1]\0", 4, "byte 0x00")
  end)

  it("refuses keys and values JSON cannot hold, naming where", function()
    encode_fails({f = print}, "a function cannot be encoded at value%.f$")
    encode_fails({1, {coroutine.create(print)}}, "a thread cannot be encoded at value%[2%]%[1%]$")
    encode_fails({x = {io.stdout}}, "a userdata cannot be encoded at value%.x%[1%]$")
    encode_fails({["a b"] = {print}}, 'at value%["a b"%]%[1%]$')
    encode_fails({[true] = 1}, "a key of type boolean")
    encode_fails({[{}] = 1}, "a key of type table")
    encode_fails({[math.huge] = 1}, "not finite")
    encode_fails(print, "at value$")
  end)

  it("reads tables raw: no metamethod runs", function()
    local function boom() error("a metamethod ran") end
    local mt = {__index = boom, __newindex = boom, __len = boom, __pairs = boom,
                __tostring = boom, __name = "X", __eq = boom, __call = boom}
    local arr = setmetatable({1, 2, 3}, mt)
    assert.are.equal("[1,2,3]", json.encode(arr))
    assert.are.equal("{}", json.encode(setmetatable({}, mt)))
    assert.are.equal('{"a":{"b":[true]}}',
                     json.encode(setmetatable({a = setmetatable({b = arr and {true}}, mt)}, mt)))
    -- a __len that lies does not make an array longer or shorter
    assert.are.equal("[1,2]", json.encode(setmetatable({1, 2}, {__len = function() return 5 end})))
  end)

  it("bounds nesting at 1000 both ways, and so refuses a cycle", function()
    local function nest(n)
      local t = {}
      local top = t
      for _ = 2, n do t[1] = {} t = t[1] end
      return top
    end
    local s = json.encode(nest(1000))
    assert.are.equal(string.rep("[", 999) .. "{}" .. string.rep("]", 999), s)
    encode_fails(nest(1001), "nesting deeper than 1000 levels")
    assert.is_table(json.decode(string.rep("[", 1000) .. string.rep("]", 1000)))
    decode_fails(string.rep("[", 1001) .. string.rep("]", 1001), 1001, "nesting deeper than 1000")
    decode_fails(string.rep('{"a":', 1001) .. "1" .. string.rep("}", 1001), 5001, "nesting")
    local t = {}
    t.self = t
    encode_fails(t, "nesting deeper than 1000 levels %(a table that contains itself%?%) at value%.self%.self")
    local a = {}
    a[1] = {a}
    encode_fails(a, "nesting")
  end)

  it("leaves nothing behind when it fails midway", function()
    local t = {}
    for i = 1, 10000 do t[i] = ("x"):rep(100) .. i end
    t[10001] = {f = print}                  -- fails at the very end
    local s = "[" .. ('"' .. ("y"):rep(100) .. '\\n",'):rep(10000) .. "]"
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    for _ = 1, 20 do
      encode_fails(t, "a function cannot be encoded at value%[10001%]%.f$")
      decode_fails(s, #s, "expected a value but found ']'")
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(collectgarbage("count") - before < 64,
                   (collectgarbage("count") - before) .. " KiB more")
  end)

  it("handles large documents in proportion to their size", function()
    local big = {}
    for i = 1, 1e6 do big[i] = i end
    local t0 = os.clock()
    local s = json.encode(big)
    local back = json.decode(s)
    assert.are.equal(1e6, #back)
    assert.are.equal(1e6, back[1e6])
    local str = string.rep("x\"é\n", 12.5e6)        -- 62.5 MB
    local enc = json.encode(str)
    assert.are.equal(str, json.decode(enc))
    local plain = string.rep("abcdefgh", 6.5e6)      -- 52 MB, no escapes
    assert.are.equal(plain, json.decode(json.encode(plain)))
    assert.is_true(os.clock() - t0 < 60, "took " .. os.clock() - t0 .. " s")
  end)
end)

describe("braid.json in a locale whose decimal point is ','", function()
  -- de_DE made with localedef into a directory of our own (LOCPATH), where
  -- localedef and the locale's sources are there; else pending.
  local dir = os.tmpname()
  os.remove(dir)
  local _, _, code = h.sh("mkdir -p " .. dir .. " && localedef -i de_DE -f UTF-8 "
                          .. dir .. "/de_DE.UTF-8")
  local it_ = code == 0 and it or pending
  it_("still writes and reads '.'", function()
    local path = h.script([[
      assert(os.setlocale("de_DE.UTF-8", "numeric"))
      assert(string.format("%.1f", 1.5) == "1,5")
      local j = braid.json
      print(j.encode({1.5, 1 / 3, 2 ^ 60, 1e300, 3.0}))
      local t = j.decode("[1.5, 0.3333333333333333, 1e300, 2.5e-3]")
      print(t[1] == 1.5, t[2] == 1 / 3, t[3] == 1e300, t[4] == 0.0025)
    ]])
    local out, err = h.sh("LOCPATH=" .. dir .. " " .. os.getenv("BRAID_BIN") .. " " .. path)
    os.remove(path)
    assert.are.equal("[1.5,0.3333333333333333,1.152921504606847e+18,1e+300,3.0]\n"
                     .. "true\ttrue\ttrue\ttrue\n", out, err)
  end)
  teardown(function() os.execute("rm -rf " .. dir) end)
end)

describe("braid.json API", function()
  it("keeps braid.json.null the light userdata NULL, as lua-cjson's", function()
    assert.are.equal("userdata", type(json.null))
    assert.are.equal(json.null, json.decode("null"))
    local ok, cjson = pcall(require, "cjson")
    if ok then
      assert.are.equal(cjson.null, json.null)
      assert.are.equal("[null]", json.encode({cjson.null}))
    end
  end)

  it("raises usage errors for a wrong argument", function()
    local e = fails(json.decode, 5)
    assert.are.equal("usage", e.kind)
    assert.matches("bad argument #1 to 'braid.json.decode' %(string expected, got number%)", e.message)
    e = fails(json.decode)
    assert.are.equal("usage", e.kind)
    e = fails(json.encode)
    assert.are.equal("usage", e.kind)
    assert.matches("bad argument #1 to 'braid.json.encode' %(value expected%)", e.message)
  end)

  it("raises kind memory, naming the call, over a memory limit", h.run(function()
    local w <close> = braid.worker([==[
      return {run = function()
        local t = {}
        for i = 1, 100000 do t[i] = "abcdefghijklmnopqrstuvwxyz0123456789" end
        local ok, e = pcall(braid.json.encode, t)
        t = nil
        collectgarbage()
        local text = "[" .. string.rep('{"a":1},', 3e5) .. "1]"
        collectgarbage()
        local ok2, e2 = pcall(braid.json.decode, text)
        return ok, e.kind, e.message, ok2, e2.kind, e2.message,
               braid.json.encode({1, 2, 3})
      end}]==], {memory_limit = 8 * 1024 * 1024})
    local ok, kind, msg, ok2, kind2, msg2, after = w:call("run")
    assert.is_false(ok)
    assert.are.same({"memory", "braid.json.encode: not enough memory"}, {kind, msg})
    assert.is_false(ok2)
    assert.are.same({"memory", "braid.json.decode: not enough memory"}, {kind2, msg2})
    assert.are.equal("[1,2,3]", after)
  end))
end)
