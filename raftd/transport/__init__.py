"""gRPC peer transport: the codec between core messages and protobuf, and the per-peer senders."""
