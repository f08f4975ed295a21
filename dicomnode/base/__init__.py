"""Foundation utilities every layer may use: atomic files, keyed locks, memory, UIDs, TLS contexts."""
