-- A Kafka sink of (id, payload) records: the key is the id, the value the JSON payload as it
-- is, at-least-once (status events, dead letters and retry records carry their own ids, and
-- their readers take a repeat as the same event). jobs/common.py registers one table per
-- name and topic (`register_payload_sinks`): ${sink} is the table's name, ${topic} its topic.

CREATE TABLE ${sink} (
  id STRING,
  payload STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic}',
  'properties.bootstrap.servers' = '${kafka_bootstrap}',
  'sink.delivery-guarantee' = 'at-least-once',
  'key.format' = 'raw',
  'key.fields' = 'id',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
);
