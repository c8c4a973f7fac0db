-- One batch row → one Notification per user, in Java. A batch row holds what every recipient
-- of the campaign shares: `head` ({"id":"<campaign_id>: escaped), `tail` (the members after
-- user_id, through the closing brace), and the user ids joined by one separator. Per user only
-- the id is written twice, escaped: backslash and double quote are all a JSON string needs
-- here, since ids with control characters never reach a segment (herald.segments). The same
-- record in Python: herald.campaigns.recipient_json.
-- ${batches} is the operator's output view; ${separator_code} is herald.segments.SEPARATOR.
SELECT k, head || e || '","user_id":"' || e || '",' || tail AS v
FROM (
  SELECT u.user_id AS k, REPLACE(REPLACE(u.user_id, '\', '\\'), '"', '\"') AS e, b.head, b.tail
  FROM ${batches} AS b
  CROSS JOIN UNNEST(SPLIT(b.ids, CHR(${separator_code}))) AS u(user_id)
)
