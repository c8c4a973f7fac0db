-- Per-window rollups of herald.status (jobs/rollup.py): counts and latency per priority,
-- provider and state, in tumbling windows of event time, the status event's `at`.
-- Names carry a `rollup_` prefix so they never meet another job's tables. The job runs with
-- table.local-time-zone UTC, so window_start/window_end read as UTC and convert to epoch ms.

-- The JSON format reads only the fields named here; a record that does not parse is skipped
-- (json.ignore-parse-errors), one without `at` is too late for every window and dropped.
CREATE TABLE rollup_status_in (
  id STRING,
  priority STRING,
  provider STRING,
  state STRING,
  `at` BIGINT,
  latency_ms BIGINT,
  event_time AS TO_TIMESTAMP_LTZ(COALESCE(`at`, 0), 3),
  WATERMARK FOR event_time AS event_time - INTERVAL '${max_out_of_orderness_s}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_status}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-rollup',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  'scan.watermark.idle-timeout' = '${watermark_idle_ms} ms',
  'format' = 'json',
  'json.ignore-parse-errors' = 'true',
  'json.fail-on-missing-field' = 'false'
);

-- One JSON record per (window, priority, provider, state), keyed by those four joined by '|'
-- (provider '-' when no provider was called: expired at the gate, duplicates). Windows are
-- final when emitted; the sink is at-least-once, so after a restore a row may come twice with
-- the same key and the same values.
CREATE TABLE rollup_out (
  k STRING,
  window_start BIGINT,
  window_end BIGINT,
  priority STRING,
  provider STRING,
  state STRING,
  events BIGINT,
  latency_avg_ms DOUBLE,
  latency_max_ms BIGINT,
  latency_p50_ms DOUBLE,
  latency_p99_ms DOUBLE
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_rollup}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'sink.delivery-guarantee' = 'at-least-once',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'json',
  'value.fields-include' = 'EXCEPT_KEY'
);

-- The same rows on the TaskManager's stdout (python -m jobs.rollup --print).
CREATE TABLE rollup_print WITH (
  'connector' = 'print'
) LIKE rollup_out (EXCLUDING OPTIONS);

-- The rollup itself. PERCENTILE is exact (linear interpolation between the two nearest ranks,
-- as numpy's default) and keeps a window's latencies in state until the window fires: fine at
-- a minute of one status stream; AVG/MAX need no such state.
CREATE TEMPORARY VIEW rollup_rows AS
SELECT CONCAT_WS('|', CAST(ws AS STRING), priority, COALESCE(provider, '-'), state) AS k,
       ws AS window_start, ws + ${rollup_window_s} * 1000 AS window_end,
       priority, provider, state, events, latency_avg_ms, latency_max_ms,
       latency_p50_ms, latency_p99_ms
FROM (
  SELECT UNIX_TIMESTAMP(CAST(window_start AS STRING), 'yyyy-MM-dd HH:mm:ss.SSS') * 1000 AS ws,
         priority, provider, state,
         COUNT(*) AS events,
         AVG(CAST(latency_ms AS DOUBLE)) AS latency_avg_ms,
         MAX(latency_ms) AS latency_max_ms,
         PERCENTILE(latency_ms, 0.5) AS latency_p50_ms,
         PERCENTILE(latency_ms, 0.99) AS latency_p99_ms
  FROM TABLE(TUMBLE(TABLE rollup_status_in, DESCRIPTOR(event_time),
                    INTERVAL '${rollup_window_s}' SECOND))
  GROUP BY window_start, window_end, priority, provider, state
)
