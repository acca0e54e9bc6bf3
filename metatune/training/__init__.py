"""Training: shared preparation (common.py), the Hugging Face Trainer path and the custom loop."""
