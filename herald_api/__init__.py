"""Herald's web layer: the HTTP API (``python -m herald_api``) and the audit consumer
(``python -m herald_api.audit``). Validation and records live in the engine-free ``herald``
core; this package adds HTTP, Kafka and Redis around them."""
