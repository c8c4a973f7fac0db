-- Each class's status events and dead letters leave through sink operators of its own (same
-- topics): one sink shared by both classes took its checkpoint barrier from both, so while a
-- promotional barrier waited behind a campaign's backlog the sink stopped reading critical's
-- input (barrier alignment), and its flush at each checkpoint waited for the campaign's
-- records too. jobs/delivery.py registers this table once per class and topic:
-- ${sink} is e.g. status_out_critical, ${topic} the topic it writes.

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
