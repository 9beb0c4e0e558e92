-- embed.lua NAME FILE: prints FILE as a C string named NAME, so the Lua-side
-- library is compiled into the binary and never read from disk at run time.
local name, path = arg[1], arg[2]
local f = assert(io.open(path, "rb"))
local src = f:read("a")
f:close()
io.write("/* generated from ", path, " by tools/embed.lua; do not edit */\n")
io.write("const char ", name, "[] =\n")
for line in src:gmatch("([^\n]*)\n?") do
  io.write('  "', (line:gsub('[\\"]', "\\%0"):gsub("\t", "\\t")), '\\n"\n')
end
io.write(";\n")
