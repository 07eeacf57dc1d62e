"""The ops API: health, readiness, metrics, deployed flows and instances (reads through the
query port only)."""
