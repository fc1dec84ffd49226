"""Supervised fine-tuning on Alpaca-format data.

The only module other packages may import from here is `training.prompts`, the single home of
the Alpaca prompt templates.
"""
