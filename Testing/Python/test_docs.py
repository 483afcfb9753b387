"""Docs that cannot rot: README's quick commands run, every relative link resolves, README stays a
homepage (<= 250 lines), Models.json matches its schema, and no tracked text file speaks of work
sessions by number (versions and dates instead)."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "Resources" / "Docs"
SHIPPED = "Resources/Models/brain-synth-1.0.1.zip"
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".zip", ".gz", ".nrrd", ".nii", ".safetensors", ".pt",
                   ".npz", ".npy", ".ico", ".pdf", ".dcm"}


def readme_blocks(lang=None):
    """The fenced code blocks of README.md (optionally only those tagged with ``lang``)."""
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    return [body for tag, body in blocks if lang is None or tag == lang]


def readme_commands():
    """Every `universalseg ...` command line in README's shell blocks (continuations joined)."""
    commands = []
    for body in readme_blocks(""):
        text = re.sub(r"\\\n\s*", " ", body)
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("universalseg "):
                commands.append(line)
    return commands


def run_cli(args, cwd=ROOT):
    exe = Path(sys.executable).parent / "universalseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "UniversalSeg"]
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_readme_is_a_homepage():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: move detail to Resources/Docs)"
    text = "\n".join(lines)
    assert "`bash .ci/demo`" in text and "`bash .ci/run`" in text
    assert "```\npython -m pytest -q Testing/Python\n```" in text
    assert "![" in text and "Testing/Screenshots/panel.png" in text


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q Testing/Python" in ci.splitlines()


def test_readme_commands_that_run_in_seconds():
    """The quick commands of README, as written: help of every command shown, info on the shipped
    model (by id and by file)."""
    commands = readme_commands()
    assert commands, "README has no universalseg command"
    shown = sorted({shlex.split(c)[1] for c in commands})
    for sub in shown:
        result = run_cli([sub, "--help"])
        assert result.returncode == 0, (sub, result.stderr[-2000:])
    quick = [c for c in commands if shlex.split(c)[1] == "info"]
    assert quick, "README shows no `universalseg info`"
    for line in quick:
        result = run_cli(shlex.split(line)[1:])
        assert result.returncode == 0, (line, result.stderr[-2000:])
        assert "brain" in result.stdout
    result = run_cli(["info", SHIPPED])
    assert result.returncode == 0 and "gray-matter" in result.stdout
    result = run_cli(["--help"])
    assert result.returncode == 0
    for sub in shown:
        assert sub in result.stdout


def _write_case(path: Path, label: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if label:
        arr = np.zeros((16, 16, 16), np.uint8)
        arr[4:10, 4:10, 4:10] = 1
        arr[11:14, 11:14, 11:14] = 2
    else:
        arr = rng.normal(0, 100, (16, 16, 16)).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))


def test_readme_catalog_works_as_written(tmp_path):
    """README's minimal catalog, with small images at the paths it names, passes the same checks
    `universalseg train` runs before training (load_catalog, then check_files on every file)."""
    from UniversalSeg.data.catalog import check_files, load_catalog

    blocks = readme_blocks("yaml")
    assert len(blocks) == 1, "README should show exactly one catalog"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(blocks[0], encoding="utf-8")
    for image, label in re.findall(r"image: (\S+), label: (\S+)\}", blocks[0]):
        _write_case(tmp_path / image, False)
        _write_case(tmp_path / label, True)
    loaded = load_catalog(catalog)
    check_files(loaded)
    assert [d.name for d in loaded.datasets] == ["my-ct"]


def _links(path: Path):
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # code is not a link
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        yield target


def _anchors(path: Path):
    """GitHub's heading anchors of a Markdown file."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def doc_files():
    return [README, *sorted(DOCS.rglob("*.md")), *sorted((ROOT / "Testing" / "Benchmarks").glob("*.md"))]


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in _links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve()
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def _check(value, schema, where, errors):
    """A small validator for the subset of JSON Schema that Models.schema.json uses (the test
    environment has no jsonschema package)."""
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "integer": int}
    if kind and (not isinstance(value, types[kind]) or (kind == "integer" and isinstance(value, bool))):
        errors.append(f"{where}: expected {kind}")
        return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: must be {schema['const']!r}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: below {schema['minimum']}")
    if kind == "object":
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing {key!r}")
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            errors += [f"{where}: unknown key {k!r}" for k in value if k not in props]
        for key, sub in props.items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}", errors)
        if "anyOf" in schema and not any(all(k in value for k in alt.get("required", []))
                                         for alt in schema["anyOf"]):
            errors.append(f"{where}: needs one of {[alt['required'] for alt in schema['anyOf']]}")
    if kind == "array":
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{where}[{i}]", errors)


def test_models_json_matches_its_schema():
    schema = json.loads((ROOT / "Resources" / "Models.schema.json").read_text(encoding="utf-8"))
    catalog = json.loads((ROOT / "Resources" / "Models.json").read_text(encoding="utf-8"))
    errors = []
    _check(catalog, schema, "Models.json", errors)
    assert not errors, errors
    for entry in catalog["models"]:
        if "file" in entry:
            assert (ROOT / "Resources" / entry["file"]).stat().st_size == entry["size"]
    # the validator is not blind: it refuses what the loader refuses
    bad = {"format_version": 1, "models": [{"id": "../x", "version": "1", "sha256": "0" * 63}]}
    errors = []
    _check(bad, schema, "bad", errors)
    assert len(errors) == 3, errors


def test_no_session_numbers_in_tracked_text():
    """Versions and dates, not work-session numbers, in every tracked text file."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    pattern = re.compile(r"\bsessions?[\s_-]*\d", re.I)
    found = []
    for name in filter(None, files):
        path = ROOT / name
        if path.suffix.lower() in BINARY_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
