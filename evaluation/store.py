"""An old name of the API client, kept only until its last caller moves.

Usage:
    from client.api import AlpacaClient          # what to use instead
    from evaluation.store import FeedbackStoreClient   # the same class, old name

`tests/demo/test_browser.py` still imports this name; once it imports `client.api.AlpacaClient`,
this module goes.
"""

from client.api import AlpacaClient as FeedbackStoreClient

__all__ = ["FeedbackStoreClient"]
