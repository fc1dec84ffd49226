"""The bottom layer, which every other package may import and which imports none of them.

Modules, each owning one thing:
    prompts.py     the Alpaca prompt templates (the one source) and format_prompt
    provenance.py  the marker files that say where a model folder came from (JSON only)
    records.py     the one reader of record files: JSON lists and JSON lines, with where each is
    errors.py      invalid settings described on one line
    project_model.py  where the project's Alpaca model (a LoRA adapter) ships, and its name
    full_disk.py   a full disk told apart from other write errors, and the exit status it gets

Nothing here imports torch, vLLM, FastAPI or Gradio.
"""
