"""The ``grpc.aio`` server: configuration, start-up, interceptors, shutdown."""
