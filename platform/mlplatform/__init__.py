"""Asset-based data and ML platform on Dagster."""
