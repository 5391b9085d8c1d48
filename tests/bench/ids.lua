-- wrk script for W2 (../shared/bench/ids.lua with sluice's path prefix): GET /api/jobs/<id>
-- for a random id from the file given after `--`, with the read token the benchmark's
-- sluice-web is given (BENCH_READ_TOKEN in tests/src/bin/sluice-bench.rs).
wrk.headers["Authorization"] = "Bearer bench-read-token-0123456789abcdef"
local ids = {}
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end
function request()
  return wrk.format("GET", "/api/jobs/" .. ids[math.random(#ids)])
end
