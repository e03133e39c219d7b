-- wrk script for the large-file row: one path requested again and again
-- (wrk -c1: one connection). done() prints one machine-readable line:
--   RESULT requests duration_us bytes status_errors socket_errors
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\n",
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write + e.timeout))
end
