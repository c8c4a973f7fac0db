-- The delivery operators' status batch rows (operators/rows.py: STATUS_BATCH: the call stages'
-- statuses and the gate's own) → one (id, payload)
-- record per status event, in Java, for the status sink (sql/payload_sink.sql). Each status is
-- its id, KEY_END (${key_end_code}) and its JSON, ended by STATUS_END (${status_end_code});
-- the last split piece after the final STATUS_END is empty and dropped.
-- ${batches} is a view of the operators' status batch rows.
SELECT SUBSTRING(s FROM 1 FOR POSITION(CHR(${key_end_code}) IN s) - 1) AS id,
       SUBSTRING(s FROM POSITION(CHR(${key_end_code}) IN s) + 1) AS payload
FROM ${batches} AS b
CROSS JOIN UNNEST(SPLIT(b.statuses, CHR(${status_end_code}))) AS u(s)
WHERE CHAR_LENGTH(s) > 0
