"""A service process: settings, the gRPC server, its interceptors, the bootstrap, error mapping."""
