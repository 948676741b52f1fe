"""Hearth: a local model server that speaks the OpenAI API."""

__version__ = "0.1.0"
