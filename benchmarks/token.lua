-- wrk script: client-credentials requests authenticated by HTTP Basic (WRK_AUTHORIZATION, when set) and/or by a
-- client certificate a trusted proxy would pass in a header (WRK_CERT_HEADER, WRK_CERT); counts non-200 answers.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
if os.getenv("WRK_AUTHORIZATION") ~= "" then
   wrk.headers["Authorization"] = os.getenv("WRK_AUTHORIZATION")
end
if os.getenv("WRK_CERT_HEADER") then
   wrk.headers[os.getenv("WRK_CERT_HEADER")] = os.getenv("WRK_CERT")
end
wrk.body = os.getenv("WRK_BODY")

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   non200 = 0
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, t in ipairs(threads) do
      bad = bad + t:get("non200")
   end
   io.write(string.format("RESULT requests=%d duration_us=%d rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f non200=%d errors=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      bad, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
