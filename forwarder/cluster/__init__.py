"""Cluster mode: many forwarder processes acting as one, on NATS JetStream and Redis."""
