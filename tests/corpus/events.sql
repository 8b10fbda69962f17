-- The query corpus: every query runs through a real cluster (and the
-- embedded database) and must return the rows one DataFusion session over
-- all the rows returns. Each query is introduced by a line
--   -- query: ordered|unordered [tolerance=R]
-- `unordered` compares as multisets; `tolerance` is the relative error
-- allowed on floats (default 1e-9, for summation order).

-- query: unordered
SELECT count(*) FROM events

-- query: unordered
SELECT count(*), count(endpoint), count(region), count(tags) FROM events

-- query: unordered
SELECT service, count(*) FROM events GROUP BY service

-- query: ordered
SELECT service, count(*), avg(latency_ms) FROM events WHERE status >= 500 GROUP BY service ORDER BY 2 DESC, 1 LIMIT 10

-- query: unordered
SELECT sum(bytes), min(bytes), max(bytes), avg(bytes) FROM events

-- query: unordered
SELECT min(latency_ms), max(latency_ms), sum(latency_ms) FROM events

-- query: ordered
SELECT status, count(*) FROM events GROUP BY status ORDER BY status

-- query: unordered
SELECT endpoint, count(*) FROM events GROUP BY endpoint

-- query: unordered
SELECT count(DISTINCT user_id) FROM events

-- query: ordered
SELECT service, count(DISTINCT endpoint) FROM events GROUP BY service ORDER BY service

-- query: ordered
SELECT service, stddev(latency_ms), var_samp(latency_ms) FROM events GROUP BY service ORDER BY service

-- query: unordered tolerance=0.1
SELECT approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FROM events

-- query: ordered
SELECT date_bin(INTERVAL '1 minute', time) AS minute, count(*) FROM events GROUP BY minute ORDER BY minute LIMIT 20

-- query: ordered
SELECT date_trunc('hour', time) AS hour, count(*), avg(latency_ms) FROM events GROUP BY hour ORDER BY hour

-- query: ordered
SELECT id, service, latency_ms FROM events ORDER BY latency_ms DESC, id LIMIT 10

-- query: ordered
SELECT service, sum(bytes) AS total FROM events GROUP BY service ORDER BY total DESC LIMIT 3

-- query: unordered
SELECT count(*) FROM events WHERE region IS NULL

-- query: ordered
SELECT region, count(*) FROM events WHERE region IS NOT NULL AND ok GROUP BY region ORDER BY region

-- query: ordered
SELECT upper(service) AS s, length(endpoint) AS l, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2

-- query: unordered
SELECT count(*) FROM events WHERE endpoint LIKE '/s%'

-- query: unordered
SELECT count(*) FROM events WHERE array_has(tags, 'canary')

-- query: ordered
SELECT tag, count(*) FROM (SELECT unnest(tags) AS tag FROM events) GROUP BY tag ORDER BY tag

-- query: ordered
SELECT cardinality(tags) AS n, count(*) FROM events GROUP BY n ORDER BY n

-- query: ordered
SELECT service, count(*) FILTER (WHERE status = 404) AS not_found FROM events GROUP BY service ORDER BY service

-- query: unordered
SELECT min(time), max(time) FROM events

-- query: unordered
SELECT count(*) FROM events WHERE time >= TIMESTAMP '2023-11-14T22:20:00' AND time < TIMESTAMP '2023-11-14T22:25:00'

-- query: ordered
SELECT extract(minute FROM time) AS m, count(*) FROM events GROUP BY m ORDER BY m

-- query: ordered
SELECT service, endpoint, count(*) AS c FROM events GROUP BY service, endpoint HAVING count(*) > 100 ORDER BY c DESC, service, endpoint LIMIT 15

-- query: ordered
SELECT id, time, tags, ok, region FROM events WHERE id < 20 ORDER BY id

-- query: ordered
SELECT service, avg(CASE WHEN ok THEN 1.0 ELSE 0.0 END) AS success FROM events GROUP BY service ORDER BY service

-- query: ordered
SELECT concat(service, ':', coalesce(endpoint, '-')) AS k, count(*) FROM events GROUP BY k ORDER BY k

-- query: unordered
SELECT count(*) FROM events WHERE user_id IN ('u1', 'u2', 'u3')

-- query: ordered
SELECT date_bin(INTERVAL '5 minutes', time, TIMESTAMP '2023-11-14T00:00:00') AS bucket, max(latency_ms) FROM events GROUP BY bucket ORDER BY bucket

-- query: ordered
SELECT service, count(*) AS c, rank() OVER (ORDER BY count(*) DESC) AS r FROM events GROUP BY service ORDER BY r, service

-- query: ordered
SELECT (id % 7) AS k, sum(latency_ms * 2) AS s FROM events WHERE NOT ok GROUP BY k ORDER BY k

-- query: ordered
SELECT id FROM events WHERE latency_ms > 300 AND service = 'api' ORDER BY id LIMIT 5
