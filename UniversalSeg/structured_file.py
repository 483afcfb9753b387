"""Reading the YAML / JSON files users and packages give us (catalogs, network and training
configs, dataset.json, model.json), with one-line errors that say where the file is broken.

YAML goes through ``yaml.safe_load`` only (no tags that build objects). A parse error becomes the
caller's error class with "line L, column C: problem"; text that is not UTF-8 and nesting deep
enough to exhaust Python's recursion (a hostile file) are refused the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["parse_text", "read_structured"]


def parse_text(text: str, yaml_syntax: bool, where: str, error: type[Exception]):
    try:
        if yaml_syntax:
            import yaml
            return yaml.safe_load(text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{where} is nested too deeply to be a real file") from None
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and its subclasses
        mark = getattr(exc, "problem_mark", None)
        where_in = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{where} is not valid YAML: {where_in}{problem}") from None


def read_structured(path: str | Path, what: str, error: type[Exception]):
    """Parse a .yaml/.yml (YAML) or any other (JSON) file; ``what`` names it in messages."""
    path = Path(path)
    if not path.is_file():
        from .file_modes import special_kind
        kind = special_kind(path) or ("a folder" if path.is_dir() else None)
        raise error(f"{what} {path} is {kind}, not a file: give the file itself" if kind
                    else f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not a text file (not UTF-8)") from None
    return parse_text(text, path.suffix.lower() in (".yaml", ".yml"), f"{what} {path}", error)
