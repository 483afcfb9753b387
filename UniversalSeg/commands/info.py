"""Print what a model segments: tasks (with colors and codes), the exclusive task groups (a voxel
is at most one task of a group), modalities, spacing, provenance, and the model card (what it was
trained on, intended use, known limits, validation) when it has one.

    universalseg info MODEL [--json]
"""
import textwrap

__all__ = ["CARD_FIELDS", "HELP", "register", "run"]

HELP = "show a model's tasks, modalities, provenance and model card"


def register(parser):
    parser.add_argument("model", help="package folder, .zip or catalog id")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..model_download import resolve_model_path
    from ..model_metadata import printable, read_summary
    from ..model_package import PackageError
    from ..networks import ConfigError, ModelConfig
    path = resolve_model_path(args.model, progress=False)
    package = read_summary(path)  # model.json only: the weights are never unpacked for info
    try:
        cfg = ModelConfig.from_dict(package.meta["network"])
    except ConfigError as exc:
        raise PackageError(f"{path}: network config: {exc}") from None
    if args.json:
        print(json.dumps({"tasks": [t.to_dict() for t in package.tasks], "modalities": list(cfg.modalities),
                          "domains": list(cfg.domains), "spacing": list(package.spacing),
                          "patch_size": list(package.patch_size),
                          "exclusive_groups": package.exclusive_groups,
                          "provenance": package.meta.get("provenance", {})}, indent=2))
        return 0
    say = lambda text: print(printable(text))  # noqa: E731 - package text never drives the terminal
    say(f"model       {args.model}")
    print(f"network     base width {cfg.base_width}, fusion sites {list(cfg.fusion.sites)}, "
          f"norm {cfg.harmonization.norm}, conv {cfg.harmonization.conv}")
    print(f"spacing     {package.spacing} mm, patch {package.patch_size}")
    say(f"modalities  {', '.join(cfg.modalities)}")
    print(f"tasks ({len(package.tasks)}):")
    for t in package.tasks:
        code = f"{t.type.scheme} {t.type.value} {t.type.meaning}" if t.type else "no standard code"
        say(f"  {t.name:20s} {t.display_name:20s} rgb{tuple(t.color)}  {code}")
    if package.exclusive_groups:
        print(f"exclusive groups ({len(package.exclusive_groups)}; a voxel is at most one task of a group):")
        for group in package.exclusive_groups:
            print(textwrap.fill(", ".join(group), 100, initial_indent="  ", subsequent_indent="    "))
    prov = package.meta.get("provenance", {})
    if prov:
        say(f"trained     {prov.get('created', '?')}, {prov.get('steps', '?')} steps on "
              f"{', '.join(prov.get('datasets', [])) or '?'}")
    card = prov.get("card") if isinstance(prov.get("card"), dict) else {}
    for key, title in CARD_FIELDS:
        if isinstance(card.get(key), str):
            print(textwrap.fill(printable(card[key]), 100, initial_indent=f"{title:13s}", subsequent_indent=" " * 13))
    return 0


CARD_FIELDS = (("summary", "summary"), ("trained_on", "trained on"), ("intended_use", "intended use"),
               ("limits", "limits"), ("validation", "validation"), ("build", "built by"))
