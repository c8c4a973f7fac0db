-- The campaign expansion job's Kafka tables (jobs/expansion.py). Names carry an `expansion_`
-- prefix so they never meet the delivery job's tables. ${...} are filled by jobs/common.py.
-- Raw key and value: parsing is the operator's, so a bad record reaches the DLQ with a reason.

CREATE TABLE expansion_campaigns_in (
  k STRING,
  v STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_campaigns}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-expansion',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

-- Control records of every kind; the job keeps the campaign cancels.
CREATE TABLE expansion_control_in (
  k STRING,
  v STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_control}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'properties.group.id' = '${consumer_group}-expansion-control',
  'scan.startup.mode' = '${startup_mode}',
  'properties.auto.offset.reset' = 'earliest',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

-- One Notification per recipient, keyed by user id. With 'exactly-once' the records of a
-- checkpoint interval are one Kafka transaction, committed when the checkpoint completes:
-- a read_committed reader never sees what a restore re-emits.
CREATE TABLE expansion_promo_out (
  k STRING,
  v STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic_promo}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'sink.delivery-guarantee' = '${expansion_delivery_guarantee}',
  'sink.transactional-id-prefix' = '${transactional_id_prefix}',
  'properties.transaction.timeout.ms' = '${transaction_timeout_ms}',
  'properties.linger.ms' = '20',
  'properties.batch.size' = '262144',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);

-- expansion_status_out and expansion_dlq_out are sql/payload_sink.sql's (jobs/expansion.py).
