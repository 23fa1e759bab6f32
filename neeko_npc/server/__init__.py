"""The gRPC daemon (no torch): the Dialogue service over an inference engine."""
