-- Herald's Kafka tables: one source per traffic class, so a campaign never shares a reader,
-- an operator chain or a slot with critical traffic.
-- Herald's Kafka tables. ${...} placeholders are filled from herald.settings by jobs/common.py.
-- The record path stays in Java: the Kafka source reads raw bytes, the event time comes from
-- the record's `created_at` (falling back to the Kafka timestamp for records that do not parse,
-- so a malformed record still flows to the dead-letter topic instead of failing the job).

CREATE TABLE critical_in (
  k STRING,
  v STRING,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  pt AS PROCTIME(),
  event_time AS COALESCE(TO_TIMESTAMP_LTZ(TRY_CAST(JSON_VALUE(v, '$.created_at') AS BIGINT), 3), kafka_ts),
  WATERMARK FOR event_time AS event_time - INTERVAL '${max_out_of_orderness_s}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_critical}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-critical',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'scan.watermark.idle-timeout' = '${watermark_idle_ms} ms',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

CREATE TABLE promo_in (
  k STRING,
  v STRING,
  kafka_ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  pt AS PROCTIME(),
  event_time AS COALESCE(TO_TIMESTAMP_LTZ(TRY_CAST(JSON_VALUE(v, '$.created_at') AS BIGINT), 3), kafka_ts),
  WATERMARK FOR event_time AS event_time - INTERVAL '${max_out_of_orderness_s}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_promo}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-promo',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  -- Skip records of aborted transactions (the expansion job writes herald.promo in them).
  'properties.isolation.level' = 'read_committed',
  'scan.watermark.idle-timeout' = '${watermark_idle_ms} ms',
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
