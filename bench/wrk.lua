-- wrk script: sends WRK_METHOD (default GET) with WRK_BODY as a JSON body when set, and
-- prints one machine-readable line at the end. Headers come from wrk's -H flags.
local body = os.getenv("WRK_BODY")
wrk.method = os.getenv("WRK_METHOD") or "GET"
if body and #body > 0 then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d socket_errors=%d bytes=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout, summary.bytes))
end
