"""Fine-tuning a package on the user's own cases (#13): adapt from the parent's weights,
add-tasks with the old outputs bit-identical, bit-exact resume, and one-line refusals."""
import dataclasses

import pytest
import torch
import yaml

from bad_input_checks import tree_state
from UniversalSeg.cli import main
from UniversalSeg.data.catalog import load_catalog
from UniversalSeg.model_package import load_package
from UniversalSeg.training.checkpoint import CheckpointError, load_checkpoint
from UniversalSeg.training.config import TrainConfig
from UniversalSeg.training.finetune import FineTuneStart, merge_replay
from UniversalSeg.training.trainer import run_training


def user_catalog(tmp_path, collection, labels=None, name="my-cases"):
    """The left-out MR-T1 site's cases as the user's own training set (all of them train)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"datasets": [{
        "name": name, "modality": "MR-T1", "root": str(collection.parent / "mr-t1-hospital-f"),
        "labels": labels or {"liver": [1], "spleen": [3], "kidney": [4]}, "split": {"validation": 0.0}}]}))
    return path


def finetune(package, catalog, out, *extra):
    evaluate = [] if "--evaluate" in extra else ["--evaluate", "none"]  # its own test below
    return main(["finetune", "--model", str(package), "--catalog", str(catalog), "--out", str(out),
                 "--device", "cpu", "--no-progress", *evaluate, *extra])


def logits(net, volume, tasks, modality):
    with torch.no_grad():
        return net(volume, net.context(tasks, modality, batch=1))["logits"]


def test_adapt_starts_from_the_parent_and_records_it(trained_run, synth_collection, tmp_path):
    parent = load_package(trained_run["package"])
    out = tmp_path / "run"
    assert finetune(trained_run["package"], user_catalog(tmp_path, synth_collection), out,
                    "--steps", "2", "--lr", "1e-12") == 0
    child = load_package(out / "model")
    assert child.config == parent.config and child.spacing == parent.spacing
    assert [t.to_dict() for t in child.tasks] == [t.to_dict() for t in parent.tasks]  # names, codes, colours
    for k, v in parent.state_dict.items():  # a learning rate of 1e-12: still the parent's weights
        torch.testing.assert_close(child.state_dict[k], v, rtol=0, atol=1e-6)
    prov = child.meta["provenance"]["finetune"]
    assert prov["mode"] == "adapt" and prov["cases"] == {"liver": 4, "spleen": 4, "kidney": 4}
    assert prov["parent"]["sha256"] == FineTuneStart(parent, trained_run["package"]).digest
    assert prov["anchor"] == 0.01 and prov["name"].endswith("-finetuned")
    assert child.meta["provenance"]["training"]["spacing"] == list(parent.spacing)


def test_add_tasks_learns_a_new_structure_and_keeps_old_outputs_bit_identical(trained_run, synth_collection,
                                                                              tmp_path, volume):
    parent = load_package(trained_run["package"])
    catalog = user_catalog(tmp_path, synth_collection, {"renal-cortex": [4], "liver": [1], "spleen": [3]})
    out = tmp_path / "run"
    assert finetune(trained_run["package"], catalog, out, "--mode", "add-tasks", "--steps", "6") == 0
    child = load_package(out / "model")
    assert list(child.config.tasks) == list(parent.config.tasks) + ["renal-cortex"]
    old, new = parent.build("cpu"), child.build("cpu")
    x = volume[:1]
    for modality in ("CT", "MR-T1", "PET"):
        assert torch.equal(logits(old, x, list(parent.config.tasks), modality),
                           logits(new, x, list(parent.config.tasks), modality))
    # only the new rows of the task tables changed
    changed = [k for k in parent.state_dict if not torch.equal(parent.state_dict[k],
                                                               child.state_dict[k][:parent.state_dict[k].shape[0]])]
    assert changed == []
    grown = [k for k in child.state_dict if child.state_dict[k].shape != parent.state_dict[k].shape]
    assert grown and all("priors.tasks" in k or "task_head" in k for k in grown)
    assert child.meta["provenance"]["finetune"]["cases"] == {"renal-cortex": 4, "liver": 4, "spleen": 4}


def test_finetune_resumes_bit_exactly_and_refuses_another_parent(trained_run, synth_collection, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("UNIVERSALSEG_THREADS", "2")
    parent = load_package(trained_run["package"])
    catalog = load_catalog(user_catalog(tmp_path, synth_collection))
    cfg = TrainConfig(spacing=parent.spacing, patch_size=parent.patch_size, batch_size=2, epochs=2,
                      iterations_per_epoch=2, num_workers=0, lr=1e-3, checkpoint_every=1, validate_every=5)

    def start(mode="adapt"):
        return FineTuneStart(parent, trained_run["package"], mode, anchor=0.01)

    full, cut = tmp_path / "full", tmp_path / "cut"
    run_training(catalog, None, cfg, full, device="cpu", progress=False, start=start())
    run_training(catalog, None, cfg, cut, device="cpu", progress=False, start=start(), max_steps=1)
    run_training(catalog, None, cfg, cut, device="cpu", progress=False, start=start(), resume=True)
    a, b = load_checkpoint(full / "checkpoints" / "last.pt"), load_checkpoint(cut / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    other = dataclasses.replace(parent, state_dict={k: v + 1 if v.is_floating_point() else v
                                                    for k, v in parent.state_dict.items()})
    with pytest.raises(CheckpointError, match="fine-tunes .* not .*repeat its --model and --mode"):
        run_training(catalog, None, cfg, cut, device="cpu", progress=False, resume=True,
                     start=FineTuneStart(other, "other.zip", "adapt", 0.01))


@pytest.mark.parametrize("labels, extra, message", [
    ({"renal-cortex": [4], "liver": [1], "spleen": [3]}, [], "--mode adapt fine-tunes the model's own tasks"),
    ({"liver": [1], "spleen": [3], "kidney": [4]}, ["--mode", "add-tasks"],
     "--mode add-tasks: every task of the catalog"),
    ({"liver": [1], "spleen": [3], "kidney": [4]}, ["--mode", "add-tasks", "--replay", "x.yaml"],
     "add-tasks freezes every old weight"),
    ({"liver": [1], "spleen": [3], "kidney": [4]}, ["--steps", "0"], "--steps 0: must be at least 1"),
    ({"liver": [1], "spleen": [3], "kidney": [4]}, ["--anchor", "-1"], "--anchor -1.0: a number >= 0"),
])
def test_bad_finetune_requests_exit_2_with_one_line_and_write_nothing(trained_run, synth_collection, tmp_path,
                                                                      capsys, labels, extra, message):
    catalog = user_catalog(tmp_path, synth_collection, labels)
    before = tree_state(tmp_path)
    assert finetune(trained_run["package"], catalog, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert tree_state(tmp_path) == before


def test_replay_takes_its_share_of_the_samples(synth_collection, tmp_path):
    user = load_catalog(user_catalog(tmp_path, synth_collection))
    replay = load_catalog(synth_collection)
    merged = merge_replay(user, replay, 0.25)
    weights = {d.name: d.weight for d in merged.datasets}
    replayed = sum(w for n, w in weights.items() if n != "my-cases")
    assert replayed / sum(weights.values()) == pytest.approx(0.25)
    assert len(merged.datasets) == 1 + len(replay.datasets)


def test_before_after_scores_each_own_case_with_a_model_that_never_saw_it(trained_run, synth_collection,
                                                                          tmp_path, capsys):
    import json
    out = tmp_path / "run"
    assert finetune(trained_run["package"], user_catalog(tmp_path, synth_collection), out, "--steps", "2",
                    "--evaluate", "rotation") == 0
    report = json.loads((out / "before_after.json").read_text())
    assert report["folds"] == 3 and report["cases"] == 4  # 4 cases of the left-out site, 3 folds
    assert set(report["before"]) == set(report["after"]) == {"liver", "spleen", "kidney"}
    assert all(0 <= v <= 1 for v in list(report["before"].values()) + list(report["after"].values()))
    assert report["summary"].startswith("Dice on your own cases (each held out, 3 folds): before ")
    for f in range(3):  # each fold trained on the other cases only
        assert (out / "folds" / f"fold{f}" / "model" / "model.json").exists()
    assert report["summary"] in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["before_after"]


def test_rotation_folds_hold_each_case_out_once(synth_collection, tmp_path):
    from UniversalSeg.training.finetune import rotation_folds
    user = load_catalog(user_catalog(tmp_path, synth_collection))
    merged = merge_replay(user, load_catalog(synth_collection), 0.5)
    folds = rotation_folds(merged, ("my-cases",))
    held = [c.id for _, test in folds for d in test.datasets for c in d.splits["validation"]]
    assert sorted(held) == sorted(c.id for c in user.datasets[0].splits["train"]) and len(set(held)) == 4
    for train, test in folds:
        out = {c.id for d in test.datasets for c in d.splits["validation"]}
        mine = {c.id for d in train.datasets if d.name == "my-cases" for c in d.splits["train"]}
        assert out and not out & mine and len(train.datasets) == len(merged.datasets)  # replay kept whole


def test_finetune_killed_and_resumed_equals_an_uninterrupted_run(trained_run, synth_collection, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    catalog = user_catalog(tmp_path, synth_collection)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}

    def cmd(out, *extra):
        return [sys.executable, "-m", "UniversalSeg", "finetune", "--model", trained_run["package"], "--catalog",
                str(catalog), "--out", str(out), "--steps", "12", "--checkpoint-every", "1", "--evaluate", "none",
                "--device", "cpu", "--no-progress", *extra]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, deadline = killed / "checkpoints" / "last.pt", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if last.exists() and load_checkpoint(last)["step"] >= 3:
                break
        except CheckpointError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 3 <= load_checkpoint(last)["step"] < 12
    subprocess.run(cmd(killed, "--resume"), check=True, env=env, capture_output=True)
    a, b = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt"), load_checkpoint(last)
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["finetune"] == b["finetune"] and a["finetune"]["mode"] == "adapt"


def test_finetune_killed_before_its_first_checkpoint_starts_again_on_resume(trained_run, synth_collection, tmp_path):
    """The SIGKILL rows of test_bad_inputs_train.py go through the same run-folder check and
    Trainer.fit; one of them for finetune: killed as its first step begins, --resume starts again
    from step 0 (it was refused: the folder held only tensorboard/) and equals an uninterrupted run."""
    import signal

    from bad_input_checks import run_killable
    catalog = user_catalog(tmp_path, synth_collection)

    def cmd(out, *extra):
        return ["finetune", "--model", trained_run["package"], "--catalog", catalog, "--out", out, "--steps", "3",
                "--checkpoint-every", "1", "--evaluate", "none", "--device", "cpu", "--no-progress", *extra]

    assert run_killable("none", cmd(tmp_path / "full")).returncode == 0
    killed = tmp_path / "killed"
    proc = run_killable("step:0", cmd(killed))
    assert proc.returncode == -signal.SIGKILL and not (killed / "checkpoints" / "last.pt").exists(), proc.stderr[-3000:]
    proc = run_killable("none", cmd(killed, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds no checkpoints/last.pt yet; starting a new run" in (killed / "train.log").read_text()
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (tmp_path / "full", killed))
    assert a["step"] == b["step"] == 3 and a["finetune"] == b["finetune"]
    for part in ("model", "ema"):
        assert [k for k in a[part] if not torch.equal(a[part][k], b[part][k])] == [], part
