-- wrk script: client-credentials requests spread over many clients (client_secret_post), in turn;
-- counts non-200 answers. Set by the runner through the environment: WRK_CLIENTS (space-separated
-- client ids), WRK_SECRET (their common secret), WRK_BODY (the rest of the form).
local ids = {}
for id in string.gmatch(os.getenv("WRK_CLIENTS") or "", "%S+") do
   table.insert(ids, id)
end
local secret = os.getenv("WRK_SECRET")
local rest = os.getenv("WRK_BODY")
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
local threads = {}
local counter = 0

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   non200 = 0
   counter = math.random(#ids)
end

function request()
   counter = counter % #ids + 1
   local body = rest .. "&client_id=" .. ids[counter] .. "&client_secret=" .. secret
   return wrk.format("POST", nil, headers, body)
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
