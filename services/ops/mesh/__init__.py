"""Process supervisor: throwaway Redis, PostgreSQL, Envoy and service replicas on loopback."""
