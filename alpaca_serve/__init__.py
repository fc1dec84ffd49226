"""alpaca-serve: the Stanford Alpaca system as one product.

Layers, bottom to top (each may import only those below it; `make lint` checks the contracts
in pyproject.toml):
    core          prompt templates, provenance, the record reader, error describing
    feedback      the store of generations, ratings and comparisons
    server, training, recover, client    the HTTP server (vLLM), fine-tuning, weight diffs,
                  the HTTP client; none imports another
    evaluation    answers, blind comparisons, votes and reports, over the client
    demo, loop    the Gradio demo and the Alpaca cycle, on top
    serve         the `alpaca-serve` command: the server with the demo mounted
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alpaca-serve")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
