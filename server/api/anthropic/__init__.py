"""Anthropic's Messages API, as an adapter over the one generation pipeline."""
