"""``cnclip demo``: the whole pipeline offline, then the search page at http://127.0.0.1:8000."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEMO_EPILOG = """\
examples:
  cnclip demo                      # build everything in demo-work/ and serve it
  cnclip demo --scale small --no-serve --work /tmp/demo

The demo draws a small shop (eight colours x six kinds of thing, products of six brands
with model codes and several pictures each, titled like 回力 红色的杯子 HL-1024), trains a
tiny model on drawings titled 红色的杯子 in two stages, exports it, indexes the shop
(vectors, words, calibrated relevance) and serves it with a search page. The model knows
only these drawings; see the README to serve real weights.
"""


def add_demo_command(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="build and serve an offline demo: drawn catalog, tiny model, index, search page",
        description="Run the whole pipeline on a drawn catalog and serve a search page.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--work", default="demo-work", help="where everything goes (demo-work)")
    demo.add_argument("--scale", choices=["full", "small"], default="full")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port (8000)")
    demo.add_argument("--no-serve", action="store_true", help="build only")
    demo.add_argument(
        "--reuse", action="store_true", help="serve what an earlier run built, if it is there"
    )
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from demo.pipeline import DemoResult, build_demo, demo_settings

    work = Path(args.work)
    built = (work / "report.json").is_file() and (work / "index" / "CURRENT").is_file()
    if args.reuse and built:
        import json

        report = json.loads((work / "report.json").read_text(encoding="utf-8"))
        result = DemoResult(work, work / "bundle", work / "index", work / "catalog", report)
        print(f"demo: reusing {work}", file=sys.stderr)
    else:
        result = build_demo(work, args.scale, progress=sys.stderr.isatty(), say=_say)
    if args.no_serve:
        return 0
    import uvicorn

    from service.app import create_app

    settings = demo_settings(result, args.host, args.port)
    print(f"demo: open http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
