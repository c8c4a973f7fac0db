-- One class's records, collected per Kafka partition into one batch per window, in Java, so
-- Python is entered once per batch and not once per record. Records are keyed by user in
-- Kafka, so a partition holds all of a user's records, and the offset gives their log order.
-- ${table} is the class's source table, ${window_s} its window (small for critical).
SELECT kafka_partition AS shard,
       JSON_ARRAYAGG(JSON_OBJECT('o' VALUE kafka_offset, 'k' VALUE k, 'v' VALUE v)) AS batch
FROM TABLE(TUMBLE(TABLE ${table}, DESCRIPTOR(pt), INTERVAL '${window_s}' SECOND))
GROUP BY kafka_partition, window_start, window_end
