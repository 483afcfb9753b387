"""The Slicer module library's status lines and error messages go through Slicer's translation
(``UniversalSegmentationLib/i18n.py``: ``slicer.i18n.translate`` in the context
"UniversalSegmentationLib.<file>", as Base/Python/slicer/i18n.py getContext names a package's
file), translated before they are formatted. A fake translator marks every text it is given; a
representative path per file shows the mark, and a scan of the sources finds no message raised or
shown as a bare English literal."""
import ast
import sys
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
LIB = Path(__file__).parents[2] / "scripted_modules" / "UniversalSegmentationLib"
sys.path.append(str(LIB.parent))  # after the core package

import UniversalSegmentationLib.segmentation_import as segmentation_import  # noqa: E402
import UniversalSegmentationLib.training_set_export as training_set_export  # noqa: E402
from UniversalSegmentationLib import dependencies, job_slots, logic, models, refinement  # noqa: E402

# Not shown in the panel: import-time errors of a broken install, the self-test's own lines.
NOT_SHOWN = {"paths.py", "self_test.py", "train_headless.py", "i18n.py"}


@pytest.fixture
def seen(monkeypatch):
    """slicer.app present (the application) and a translator that wraps each text in <...>."""
    seen = []
    i18n = types.ModuleType("slicer.i18n")
    i18n.translate = lambda context, text: seen.append((context, text)) or f"<{text}>"
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(), raising=False)
    return seen


def test_status_lines_and_errors_are_translated_in_their_files_context(seen, tmp_path):
    slots = job_slots.JobSlots()
    cancelled = []
    slots.start("run", types.SimpleNamespace(cancel=cancelled.append))
    with pytest.raises(ValueError, match=r"^<a run job is already running; cancel it first>$"):
        slots.start("run", types.SimpleNamespace(cancel=cancelled.append))
    assert cancelled == ["<another job of this kind is running>"]

    unreadable = r"^<the segmentation process ended without a readable result \(none\.seg\.nrrd\)>$"
    with pytest.raises(RuntimeError, match=unreadable):
        segmentation_import.import_result(tmp_path / "none.seg.nrrd", slicer.vtkMRMLSegmentationNode(),
                                          slicer.vtkMRMLScalarVolumeNode())
    with pytest.raises(training_set_export.TrainingSetError, match="^<select the volume the segments were drawn on>$"):
        training_set_export.add_to_training_set(None, None, tmp_path, "CT", {})
    assert training_set_export.training_set_summary(tmp_path / "none") == "<no cases yet>"

    question = dependencies.Plan(torch_needed=True, install=["monai>=1.4"]).question()
    assert question.startswith("<UniversalSeg needs these Python packages: <torch (from the PyTorch extension")
    finetune = {"name": "mine", "mode": "adapt", "finetuned": "2026-12-01T10:00", "cases": {"liver": 2},
                "parent": {"model_id": "brain-synth", "version": "1.0.1"}}
    assert models.version_text(finetune).startswith("<Fine-tuned version 'mine' of brain-synth 1.0.1 (adapt, ")

    job = logic.Job(types.SimpleNamespace(cancel=lambda: None))
    assert job.stage == "<starting>"
    job.cancel()  # the default reason is translated when used, not when the module is imported
    assert job.message == "<cancelled>"

    refine = refinement.SegmentRefinement.__new__(refinement.SegmentRefinement)  # no worker, no nodes
    refine.worker = types.SimpleNamespace(poll=lambda: [{"id": 1, "ok": True}, {"id": 2, "ok": False, "error": "x"}],
                                          running=True)
    refine.pending, refine.points_of, refine.clicks, refine._waiting = {1: "set_mask", 2: "undo"}, {}, [], []
    assert refine.poll() == ["x"]
    assert refine.status == "<last request refused: {error}>".format(error="x")

    contexts = {context for context, _ in seen}
    assert {"UniversalSegmentationLib.job_slots", "UniversalSegmentationLib.segmentation_import",
            "UniversalSegmentationLib.training_set_export", "UniversalSegmentationLib.dependencies",
            "UniversalSegmentationLib.models", "UniversalSegmentationLib.logic",
            "UniversalSegmentationLib.refinement"} <= contexts
    # translated first, formatted after: the translator sees the placeholders, never the values
    assert ("UniversalSegmentationLib.job_slots", "a {slot} job is already running; cancel it first") in seen
    assert ("UniversalSegmentationLib.refinement",
            "ready: click inside a missed region (positive) or on a false positive (negative)") in seen


def _bare_english(node) -> bool:
    """A string literal or f-string with words in it (``f"{error}: {detail}"`` has none)."""
    parts = node.values if isinstance(node, ast.JoinedStr) else [node]
    return any(isinstance(p, ast.Constant) and isinstance(p.value, str) and any(c.isalpha() for c in p.value)
               for p in parts)


def test_no_message_is_raised_or_shown_as_a_bare_english_literal():
    """Every ``raise X("...")``, ``self.status = "..."``, ``finish(ok, "...")`` and ``cancel("...")``
    in the library wraps its text in ``_()``."""
    found = []
    for path in sorted(LIB.glob("*.py")):
        if path.name in NOT_SHOWN:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            texts = []
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                texts = node.exc.args[:1]
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "status"
                                                      for t in node.targets):
                texts = [node.value]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("finish", "cancel")):
                texts = node.args[-1:]
            found += [f"{path.name}:{node.lineno}" for text in texts if _bare_english(text)]
    assert not found, f"user-visible text not through _(): {found}"
