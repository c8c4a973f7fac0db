"""The local stack: a real Kafka (KRaft) broker, Redis, the provider mocks and a standalone Flink
cluster, installed and started by the project itself with pid files, so `down` ends only what
`up` started.
"""
