"""The FastAPI retrieval service, without torch: ``service.app.create_app(settings)``.

Routes (:mod:`service.routes`) for text and image search, zero-shot classification,
embeddings, catalog changes, health and metrics; per-tower dynamic batchers
(:mod:`service.batcher`), the Redis or in-process cache (:mod:`service.cache`), the index
being served and switched (:mod:`service.catalog`), Prometheus metrics, JSON errors and the
optional search page (:mod:`service.ui`).
"""
