"""The search page at ``/`` and the media folder under ``/media/`` (when ``ui.enabled``).

The page is one static HTML file (``service/static/index.html``) that calls the JSON API
from the browser: text search (with a mode switch, the relevance threshold, grouping by
``ui.group_by`` and a boost on ``ui.boost_field``; each result shows its relevance and
the query's reading, "不含：红色"), image search of an uploaded picture, and zero-shot
labels for it. Items whose metadata holds ``image_url`` are shown with their picture.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.settings import Settings

PAGE = Path(__file__).with_name("static") / "index.html"
TOP_K = 12


def install_ui(app: FastAPI, settings: Settings) -> None:
    """Add ``GET /`` (and ``/media``) to ``app``; nothing when the page is off."""
    ui = settings.ui
    if not ui.enabled:
        return
    config = json.dumps(
        {
            "labels": ui.labels,
            "top_k": TOP_K,
            "group_by": ui.group_by,
            "boost_field": ui.boost_field,
        },
        ensure_ascii=False,
    )
    # The configuration goes in a JSON script block; no "<" in it can close the tag.
    safe = config.replace("<", "\\u003c")
    block = f'<script id="config" type="application/json">{safe}</script>'
    page = PAGE.read_text(encoding="utf-8").replace("<script>", block + "\n<script>", 1)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    if ui.media_dir is not None:
        app.mount("/media", StaticFiles(directory=ui.media_dir, check_dir=True), name="media")
