"""Blind pairwise evaluation of served models: answers, comparisons, votes and reports.

Usage:
    alpaca-eval answer --server-url http://127.0.0.1:8000 --out ours.jsonl
    alpaca-eval compare --a ours.jsonl --label-a ours --out comparison.json   # vs text-davinci-003
    alpaca-eval vote --comparison comparison.json --pair-id pair-000 --winner left
    alpaca-eval judge --comparison comparison.json --judge-url http://judge:8000
    alpaca-eval report --comparison comparison.json --chart report.png
    alpaca-eval leaderboard --server-url http://127.0.0.1:8000     # every model, all votes
    alpaca-eval annotations --comparison comparison.json --out annotations.json  # AlpacaEval's

The evaluation set and text-davinci-003's answers to it ship with the package (`evaluation/data/`,
paths in `alpaca_serve.evaluation.datasets`). Answers and votes live in the server's feedback
store, reached
through `alpaca_serve.client.api`.

`evaluation` is a client of the server's HTTP API like the demo: it never imports `server`.
"""
