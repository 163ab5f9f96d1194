"""The FastAPI retrieval service (filled by the service issue)."""
