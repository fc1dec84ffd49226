"""Supervised fine-tuning on Alpaca-format data.

The only modules other packages may import from here are `alpaca_serve.core.prompts`, the single
home of
the Alpaca prompt templates, and `alpaca_serve.core.provenance`, the reader of the marker files
that say
where a model folder came from (it only reads JSON).
"""
