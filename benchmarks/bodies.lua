-- wrk script: POST /oauth/token with a different body per request, read from WRK_BODIES (one form body per
-- line, split between the WRK_THREADS threads), and HTTP Basic when WRK_AUTHORIZATION is set; counts non-200
-- answers and how many bodies had to be used a second time (the file ran out).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
if os.getenv("WRK_AUTHORIZATION") ~= "" then
   wrk.headers["Authorization"] = os.getenv("WRK_AUTHORIZATION")
end

local threads = {}
local count = 0

function setup(thread)
   thread:set("id", count)
   count = count + 1
   table.insert(threads, thread)
end

function init(args)
   non200, reused, index, wrapped, bodies = 0, 0, 0, false, {}
   local n, i = tonumber(os.getenv("WRK_THREADS")), 0
   for line in io.lines(os.getenv("WRK_BODIES")) do
      if i % n == id then
         table.insert(bodies, line)
      end
      i = i + 1
   end
end

function request()
   index = index + 1
   if index > #bodies then
      index, wrapped = 1, true
   end
   if wrapped then
      reused = reused + 1
   end
   return wrk.format(nil, nil, nil, bodies[index])
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
   end
end

function done(summary, latency, requests)
   local bad, again = 0, 0
   for _, t in ipairs(threads) do
      bad = bad + t:get("non200")
      again = again + t:get("reused")
   end
   io.write(string.format("RESULT requests=%d duration_us=%d rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f non200=%d errors=%d reused=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      bad, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout, again))
end
