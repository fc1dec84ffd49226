"""Instruction data made by a teacher model: Stanford Alpaca's self-instruct recipe.

`alpaca-generate` (cli.py) runs it; run.py drives a run, recipe.py holds the seed tasks and the
request, teacher.py asks any OpenAI-compatible endpoint, parsing.py and rules.py read and filter
the answers, dedup.py and rouge.py drop near-duplicates, journal.py makes a run resumable.
"""
