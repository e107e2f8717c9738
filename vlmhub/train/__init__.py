"""Training: data, collation, objectives, stages."""
