-- Herald's Kafka tables: one source per traffic class, so a campaign never shares a reader,
-- an operator chain or a slot with critical traffic. ${...} placeholders are filled from
-- herald.settings by jobs/common.py.
-- The record path stays in Java: the Kafka source reads raw bytes (a malformed record still
-- flows, to the dead-letter topic). No watermark: the batches are processing-time windows and
-- expiry is checked against the wall clock (operators/gate.py says why), and a watermark from
-- `created_at` cost a JSON parse of every record in the source (≈ 3-4 µs of the source
-- thread's 11-13 per record, bench/results/delivery_throughput.md).

CREATE TABLE critical_in (
  k STRING,
  v STRING,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  pt AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_critical}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-critical',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TABLE promo_in (
  k STRING,
  v STRING,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  pt AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_promo}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-promo',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

-- Retries (issue 4): the call stage re-queues a notification on its class's retry topic
-- (key: user_id; value: the notification plus channel, attempt, not_before and the attempt
-- history, see udfs/requeue.py), and the same job reads it back into that class's call stage.
-- Through Kafka, so a retry waiting for its time is never lost with a crash.
CREATE TABLE retry_critical_in (
  k STRING,
  v STRING,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  pt AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_retry_critical}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-retry-critical',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TABLE retry_promo_in (
  k STRING,
  v STRING,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  pt AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_retry_promo}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-retry-promo',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

-- The retry topics' sinks (retry_critical_out, retry_promo_out) are sql/payload_sink.sql's.

-- Control records on herald.control the delivery job applies (quota changes, campaign cancels).
CREATE TABLE control_quota_in (
  k STRING,
  v STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_control}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-control',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);
