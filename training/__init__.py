"""Supervised fine-tuning on Alpaca-format data.

The only modules other packages may import from here are `training.prompts`, the single home of
the Alpaca prompt templates, and `training.provenance`, the reader of the marker files that say
where a model folder came from (it only reads JSON).
"""
