-- Herald's delivery sources: one per traffic class and its retry topic (critical_in, promo_in,
-- retry_critical_in, retry_promo_in), so a campaign never shares a reader, an operator chain or
-- a slot with critical traffic. jobs/common.py registers one table of this shape per source
-- (`register_kafka_sources`): ${table} is its name, ${topic} its topic, ${group} its consumer
-- group's suffix; the other ${...} are filled from herald.settings.
-- The record path stays in Java: the Kafka source reads raw bytes (a malformed record still
-- flows, to the dead-letter topic). No watermark: the batches are processing-time windows and
-- expiry is checked against the wall clock (operators/gate.py says why), and a watermark from
-- `created_at` cost a JSON parse of every record in the source (≈ 3-4 µs of the source
-- thread's 11-13 per record, bench/results/delivery_throughput.md).

-- Retries (issue 4): the call stage re-queues a notification on its class's retry topic
-- (key: user_id; value: the notification plus channel, attempt, not_before and the attempt
-- history, see udfs/requeue.py), and the same job reads it back into that class's call stage.
-- Through Kafka, so a retry waiting for its time is never lost with a crash.

CREATE TABLE ${table} (
  k STRING,
  v STRING,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  pt AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-${group}',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);
