"""Operations: metrics, status, systemd and logs, read from snapshots of the pipeline."""
