"""Model weights: convert the bundled GGUF default model, make and apply weight diffs."""
