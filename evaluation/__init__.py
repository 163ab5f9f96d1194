"""Retrieval and zero-shot evaluation (filled by the evaluation issue)."""
