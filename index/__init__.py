"""Catalog embeddings to FAISS index versions, and the search API the service uses.

``index.load(DIR)`` returns a :class:`index.search.CatalogIndex`; building,
evaluating and changing versions live in :mod:`index.build`, :mod:`index.evaluate`
and :mod:`index.update` (``cnclip index ...`` on the command line).
"""

from index.search import CatalogIndex, SearchResult, load

__all__ = ["CatalogIndex", "SearchResult", "load"]
