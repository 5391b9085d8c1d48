-- wrk script for W2 (../shared/bench/ids.lua with sluice's path prefix): GET /api/jobs/<id>
-- for a random id from the file given after `--`.
local ids = {}
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end
function request()
  return wrk.format("GET", "/api/jobs/" .. ids[math.random(#ids)])
end
