-- One batch row (campaign id, the JSON members every recipient shares, the user ids joined by
-- one separator) → one Notification per user, in Java: split, then per user only the two
-- members that differ (`id` = {campaign_id}:{user_id}, `user_id`) are written, JSON-escaped.
-- ${batches} is the operator's output view; ${separator_code} and ${recipient_separator} come
-- from herald.segments.SEPARATOR and herald.campaigns.RECIPIENT_SEPARATOR.
SELECT
  u.user_id AS k,
  '{"id":' || JSON_STRING(b.campaign_id || '${recipient_separator}' || u.user_id)
    || ',"user_id":' || JSON_STRING(u.user_id) || ',' || b.tail AS v
FROM ${batches} AS b
CROSS JOIN UNNEST(SPLIT(b.ids, CHR(${separator_code}))) AS u(user_id)
