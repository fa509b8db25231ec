"""Authentication: development keys and tokens, verified identities, and the server interceptor."""
