"""Training: two engines (the Hugging Face Trainer path in hf_trainer.py, the custom loop in loop.py)
that train a `common.Prepared` whatever made it, and run.py, which prepares a config, runs an engine
and saves the run (`prepare`, `train`: what the CLI and `metatune bench` call)."""
