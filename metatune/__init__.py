"""metatune: fine-tune language models to extract bibliographic metadata from academic documents."""

__version__ = "0.1.0"
