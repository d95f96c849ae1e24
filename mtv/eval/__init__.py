"""Multi-view evaluation and prediction."""
