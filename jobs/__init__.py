"""Flink jobs: each exposes ``build_pipeline(...)`` and ``main()``; wiring only, no business rules."""
