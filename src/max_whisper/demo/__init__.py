"""`max-whisper demo`: a local web page that runs several backends on one clip and compares them.

FastAPI serves the page (static/) and a small JSON API (app.py). Nothing is fetched from the
network: the page's script draws its own chart. Models load on first use, once per (model,
backend).
"""

from __future__ import annotations


def add_parsers(sub) -> None:
    from ..bench import DEFAULT_BACKENDS, DEFAULT_MODELS

    p = sub.add_parser(
        "demo",
        help="a local web page comparing backends on a clip, side by side",
        description="Serve a local web page: pick a clip or upload one, choose the model, "
        "backends and decoding (greedy or beam search, previous-text conditioning), and compare "
        "timestamped transcripts (word differences highlighted) and speed.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated models offered on the page, those installed (default: "
        f"{','.join(DEFAULT_MODELS)}; base needs the base extra); the first is preselected",
    )
    p.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated backends offered (default: all that run here; GPU rows appear only "
        "when a GPU is present)",
    )
    p.add_argument(
        "--clips",
        nargs="*",
        default=None,
        metavar="FILE_OR_DIR",
        help="clips to offer (default: samples/sample.wav and ../shared/audio when present)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..errors import UsageError

    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise UsageError(
            f"the demo needs the serve extra ({exc.name} is missing): "
            "pip install 'max-whisper[serve]'"
        ) from None
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    try:
        app = create_app(models=models, backends=backends, clips=args.clips)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"max-whisper demo: open http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
