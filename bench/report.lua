-- wrk script: optional method/body from the environment, and one JSON line
-- with what the benchmark needs (requests, errors, latency percentiles in us).
local method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
if method then wrk.method = method end
if body then wrk.body = body end

-- BENCH_DISTINCT: every request a different URL (?id=n), so the proxy cannot
-- share one upstream call between identical concurrent GETs.
if os.getenv("BENCH_DISTINCT") then
  local counter = 0
  request = function()
    counter = counter + 1
    return wrk.format(nil, wrk.path .. "?id=" .. counter)
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(99)))
end
