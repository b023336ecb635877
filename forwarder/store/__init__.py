"""Storage roles: the durable log, profiles and their operations, dead-letter files."""
