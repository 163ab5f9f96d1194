"""``cnclip serve``: the REST service under uvicorn (one or several worker processes)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

SERVE_EPILOG = """\
examples:
  cnclip serve --bundle models/vit-b-16 --index indexes/products
  CNCLIP_CACHE__REDIS_URL=redis://127.0.0.1:6379/0 CNCLIP_SECURITY__API_KEY=secret \\
      cnclip serve --bundle models/vit-b-16 --index indexes/products --workers 2

Every setting can also be given as a CNCLIP_* environment variable (nested with __),
for example CNCLIP_TEXT_BATCH__MAX_WAIT_MS=2; see the README's service section.
"""


def add_serve_command(sub: Any) -> None:
    from runtime.sessions import BACKENDS

    serve = sub.add_parser(
        "serve",
        help="serve search, classification and embeddings over REST (FastAPI + uvicorn)",
        description="Serve a model bundle and (optionally) an index over REST.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--bundle", help="model bundle directory (or CNCLIP_BUNDLE)")
    serve.add_argument("--index", help="index root or version directory (or CNCLIP_INDEX)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--backend", choices=BACKENDS, help="encoder backend (default onnxruntime)")
    serve.add_argument("--threads", type=int, help="CPU threads per encoder session")
    serve.add_argument(
        "--redis", metavar="URL", help="cache in Redis, e.g. redis://127.0.0.1:6379/0"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=run)


def _environment(args: argparse.Namespace) -> None:
    """Command-line options become CNCLIP_* variables, so worker processes see them too."""
    given = {
        "CNCLIP_BUNDLE": args.bundle,
        "CNCLIP_INDEX": args.index,
        "CNCLIP_HOST": args.host,
        "CNCLIP_PORT": args.port,
        "CNCLIP_WORKERS": args.workers,
        "CNCLIP_BACKEND": args.backend,
        "CNCLIP_THREADS": args.threads,
        "CNCLIP_CACHE__REDIS_URL": args.redis,
        "CNCLIP_LOG_LEVEL": args.log_level,
    }
    for name, value in given.items():
        if value is not None:
            os.environ[name] = str(value)


def _preflight(settings: Any) -> None:
    """The mistakes worth a clear message before any worker starts."""
    from runtime.bundle_manifest import BundleManifest

    BundleManifest.read(settings.bundle)
    if settings.index is not None:
        from index import check_bundle

        note = check_bundle(settings.index, settings.bundle)
        if note:
            print(f"cnclip serve: {note}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from runtime.errors import ConfigError

    _environment(args)
    if "CNCLIP_BUNDLE" not in os.environ:
        raise ConfigError("give the model bundle: --bundle DIR (or CNCLIP_BUNDLE)")
    from service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    _preflight(settings)
    import uvicorn

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers > 1:
        # Workers share their metrics through files; the variable must be set before
        # any worker imports prometheus_client.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cnclip-metrics-")
        uvicorn.run(
            "service.app:create_app_from_env", factory=True, workers=settings.workers, **options
        )
        return 0
    from service.app import create_app

    uvicorn.run(create_app(settings), **options)
    return 0
