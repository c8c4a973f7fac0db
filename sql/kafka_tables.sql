-- The delivery job's Kafka tables besides its sources (sql/kafka_source.sql). ${...} placeholders
-- are filled from herald.settings by jobs/common.py.

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
