-- wrk script: GET tile paths read from a file, one path per line.
--   wrk ... -s tiles.lua http://127.0.0.1:PORT -- URLS_FILE random|seq
-- random: a uniformly random path per request (math.randomseed(42), so every
--         server is asked the same sequence); seq: every path in turn (warm-up).
-- done() prints one machine-readable line:
--   RESULT requests duration_us p50_us p99_us connect read write status timeout
local paths = {}
local mode = "random"
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then paths[#paths + 1] = line end
  end
  mode = args[2] or "random"
  math.randomseed(42)
end

function request()
  local p
  if mode == "seq" then
    i = i + 1
    p = paths[(i - 1) % #paths + 1]
  else
    p = paths[math.random(#paths)]
  end
  return wrk.format(nil, p)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
