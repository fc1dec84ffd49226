"""Gradio chat demo: a client of the server's HTTP API (it never imports `server`)."""
