"""Supervised fine-tuning on Alpaca-format data.

`alpaca-train` is `cli.py` (`fine_tune` is the same run called as a library); `train.py` is the
supervised fine-tuning, `dpo.py` the preference training, both on the Trainer stack. The prompt
templates and the provenance markers it writes live in `alpaca_serve.core`, below every package.
"""
