"""Provider calls and other per-batch Python work that runs inside Flink operators."""
