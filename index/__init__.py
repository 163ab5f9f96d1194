"""Catalog embeddings to FAISS index versions (filled by the index issue)."""
