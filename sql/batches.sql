-- Released notifications, collected per shard into one batch per window, in Java, so the
-- Python call stage is entered once per batch. ${table} is one class's released stream,
-- ${window_ms} that class's batching window (small for critical, larger for promotional).
SELECT shard, ARRAY_AGG(payload) AS batch
FROM TABLE(TUMBLE(TABLE ${table}, DESCRIPTOR(pt), INTERVAL '${window_s}' SECOND))
GROUP BY shard, window_start, window_end
