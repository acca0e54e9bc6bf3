"""Training: two engines (the Hugging Face Trainer path in hf_trainer.py, the custom loop in loop.py)
that train whatever an objective prepared (common.Prepared), and run.py, which prepares with the
config's objective, runs an engine and saves the run (`prepare`, `train`: what the CLI and
`metatune bench` call)."""
