"""Ollama's native API (/api/*), as adapters over the one generation pipeline."""
