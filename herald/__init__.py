"""Herald's engine-free core: models, validation and delivery decisions in plain Python.

Nothing in this package imports pyflink, a Kafka client or an HTTP server, so every rule can be
unit-tested without a running stack (tests/unit/test_core_is_engine_free.py checks that).
"""
