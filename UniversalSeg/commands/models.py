"""Published models and the local cache: list them, download one, import a local zip.

    universalseg models list
    universalseg models download MODEL_ID
    universalseg models import FILE.zip [--name NAME.zip] [--replace]
"""
from ..errors import InputError

__all__ = ["HELP", "register", "run"]

HELP = "list, download or import model packages (cache: $UNIVERSALSEG_CACHE or ~/.cache/universalseg)"


def register(parser):
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="catalog models and cached packages")
    d = sub.add_parser("download", help="download a catalog model into the cache")
    d.add_argument("id")
    d.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="json: one JSON object per line on stdout (for programs such as the Slicer module)")
    i = sub.add_parser("import", help="validate a local model zip and copy it into the cache")
    i.add_argument("zip")
    i.add_argument("--name", help="file name in the cache (default: the zip's name)")
    i.add_argument("--replace", action="store_true", help="replace a different model cached under that name")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..model_download import (
        cache_dir,
        cached_packages,
        fetch_model,
        import_model,
        load_model_catalog,
        shipped_model_path,
    )
    from ..model_metadata import printable
    if args.action == "list":
        entries = load_model_catalog()
        print(f"catalog ({len(entries)}):")
        for e in entries:
            where = "  shipped" if e.shipped else ""
            print(printable(f"  {e.id} {e.version}  {', '.join(map(str, e.modalities))}  {len(e.tasks)} tasks  "
                            f"{e.license}{where}"))  # catalog text never drives the terminal
        cached = cached_packages()
        print(f"cached in {cache_dir() / 'models'} ({len(cached)}):")
        for p in cached:
            print(printable(f"  {p.name}"))
    elif args.action == "download":
        entries = {e.id: e for e in load_model_catalog()}
        if args.id not in entries:
            raise InputError(f"no model {args.id!r} in the catalog; known: {sorted(entries)}")
        if entries[args.id].shipped:  # nothing to download: verify it in place
            print(shipped_model_path(entries[args.id]))
            return 0
        on_bytes = None
        if args.progress == "json":
            from ..inference.progress import JsonLinesProgress
            report = JsonLinesProgress()

            def on_bytes(done, total):
                report("download", done / total if total else 0.0, f"{done / 1e6:.1f} MB")
        print(fetch_model(entries[args.id], progress=args.progress == "bar", on_bytes=on_bytes))
    else:
        print(import_model(args.zip, name=args.name, replace=args.replace))
    return 0
