"""Where Slicer finds the module, its library and the core package, with Python's real import
machinery, in the layouts we ship: the build/install tree (one folder, as CMakeLists.txt copies it)
and a source checkout (``scripted_modules/`` as an additional module path). Slicer loads a module
file by path into ``sys.modules`` under its base name (qSlicerScriptedUtils::loadSourceAsModule)
and appends the module's folder to ``sys.path`` (qSlicerScriptedLoadableModuleFactory)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

# What Slicer does when it loads the module, minus executing it (that needs qt / the app): register
# the file under its name, put its folder on sys.path; then what our module file imports.
SLICER_LOAD = """
import importlib.util, json, sys
folder, module_file = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("UniversalSegmentation", module_file)
sys.modules["UniversalSegmentation"] = importlib.util.module_from_spec(spec)
sys.path.append(folder)
from UniversalSegmentationLib import models, panel_state, dependencies, job_slots
from UniversalSegmentationLib.paths import resources_dir
import UniversalSeg
from UniversalSeg.model_metadata import read_summary
print(json.dumps({"core": UniversalSeg.__file__, "resources": str(resources_dir()),
                  "heavy": sorted(m for m in ("torch", "monai", "SimpleITK") if m in sys.modules),
                  "choices": [c.label for c in models.available_models()]}))
"""


def build_tree(dest: Path) -> Path:
    """The layout CMakeLists.txt produces in <build>/lib/Slicer-X.Y/qt-scripted-modules."""
    folder = dest / "qt-scripted-modules"
    shutil.copytree(ROOT / "scripted_modules", folder, ignore=shutil.ignore_patterns("CMakeLists.txt", "__pycache__"))
    shutil.copytree(ROOT / "UniversalSeg", folder / "UniversalSeg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "Resources", folder / "Resources")
    return folder


def clean_env(tmp_path):
    """No PYTHONPATH, no installed core on the path: only what Slicer's loading gives."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["UNIVERSALSEG_CACHE"] = str(tmp_path / "cache")
    return env


def load_like_slicer(folder: Path, tmp_path: Path) -> dict:
    # -S -I: no site-packages (the editable install of the core must not help), isolated mode
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = "import sys; sys.path[:0] = " + repr(site) + "\n" + SLICER_LOAD.replace(
        "import UniversalSeg\n", "import UniversalSeg\nassert 'site-packages' not in UniversalSeg.__file__\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(folder),
                          str(folder / "UniversalSegmentation.py")],
                         capture_output=True, text=True, cwd=tmp_path, env=clean_env(tmp_path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_build_and_install_tree(tmp_path):
    folder = build_tree(tmp_path)
    info = load_like_slicer(folder, tmp_path)
    assert Path(info["core"]) == folder / "UniversalSeg" / "__init__.py"
    assert Path(info["resources"]) == folder / "Resources"
    assert info["heavy"] == []  # Slicer's GUI process never imports torch, MONAI or SimpleITK for us


def test_source_checkout(tmp_path):
    info = load_like_slicer(ROOT / "scripted_modules", tmp_path)
    assert Path(info["core"]) == ROOT / "UniversalSeg" / "__init__.py"
    assert Path(info["resources"]) == ROOT / "Resources"
    assert info["heavy"] == []


def test_children_run_the_core_from_any_working_directory(tmp_path):
    """`PythonSlicer -m UniversalSeg` in the build tree, from a folder that holds the module file
    (the old clash): the child gets the core's folder on PYTHONPATH and an explicit cwd."""
    folder = build_tree(tmp_path)
    sys.path.insert(0, str(folder))
    try:
        for name in [m for m in sys.modules if m.startswith("UniversalSegmentationLib")]:
            del sys.modules[name]
        from UniversalSegmentationLib.command import child_environment
        env = child_environment(env=clean_env(tmp_path))
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.startswith("UniversalSegmentationLib")]:
            del sys.modules[name]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(folder)
    for cwd in (folder, tmp_path):
        out = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                              "import runpy; sys.argv = ['UniversalSeg', '--version']; "
                              "runpy.run_module('UniversalSeg', run_name='__main__')",
                              env["PYTHONPATH"].split(os.pathsep)[0]],
                             capture_output=True, text=True, cwd=cwd, env=env)
        assert out.returncode == 0 and out.stdout.startswith("UniversalSeg "), out.stderr


def test_core_metadata_modules_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, UniversalSeg.model_metadata, UniversalSeg.model_download, "
                          "UniversalSeg.parent_watch; "
                          "print(sorted(m for m in ('torch', 'monai', 'numpy') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
