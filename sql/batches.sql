-- One class's records, collected per lane (partition mod ${lanes}, one lane per gate subtask:
-- operators/lanes.py) into one batch per window, in Java, so Python is entered once per batch
-- and not once per record. Records are keyed by user in Kafka, so a partition holds all of a
-- user's records, and (partition, offset) gives their log order; 't', the record's log
-- timestamp in epoch ms (the job's local time zone is UTC), is the log's clock for seq holds.
-- ${table} is the class's source table, ${window_s} its window (small for critical).
SELECT CAST(MOD(kafka_partition, ${lanes}) AS INT) AS shard,
       JSON_ARRAYAGG(JSON_OBJECT('p' VALUE kafka_partition, 'o' VALUE kafka_offset,
                                 't' VALUE EXTRACT(EPOCH FROM kafka_ts) * 1000
                                           + EXTRACT(MILLISECOND FROM kafka_ts),
                                 'k' VALUE k, 'v' VALUE v)) AS batch
FROM TABLE(TUMBLE(TABLE ${table}, DESCRIPTOR(pt), INTERVAL '${window_s}' SECOND))
GROUP BY MOD(kafka_partition, ${lanes}), window_start, window_end
