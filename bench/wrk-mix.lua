-- wrk script: GET the space-separated paths of WRK_PATHS in turn (each connection starts at
-- a different one), and print the same WRK_RESULT line as wrk.lua. Headers come from -H.
local paths = {}
for p in string.gmatch(os.getenv("WRK_PATHS") or "/", "%S+") do
  table.insert(paths, p)
end
local counter = 0
local id = 0

setup = function(thread)
  thread:set("id", id)
  id = id + 1
end

request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter + id) % #paths + 1])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d socket_errors=%d bytes=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout, summary.bytes))
end
