"""Training end to end: it learns, it resumes bit-exactly after SIGKILL, it runs under torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY_TRAIN_NET
from UniversalSeg.model_package import load_package
from UniversalSeg.training.checkpoint import CheckpointError, load_checkpoint


@pytest.fixture
def tiny_net_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_TRAIN_NET))
    return path


def test_tiny_training_run_learns_and_exports_a_package(trained_run):
    dice = trained_run["validation"]["dice"]
    livers = [v for k, v in dice.items() if k.endswith("/liver")]
    # chance level for the liver (about 3% of the field of view) is a Dice of about 0.03
    assert len(livers) == 4 and sum(livers) / len(livers) > 0.5, dice
    assert set(k.split("/")[1] for k in dice) == {"liver", "spleen", "kidney", "liver-tumor"}
    package = load_package(trained_run["package"])
    assert list(package.config.tasks) == ["liver", "spleen", "kidney", "liver-tumor"]
    assert package.meta["provenance"]["steps"] == 60
    assert package.tasks[0].type.value == "10200004"
    net = package.build("cpu")
    run = trained_run["out"]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ema = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    for k, v in net.state_dict().items():
        assert torch.equal(v, ema[k]), k  # the package carries the EMA weights
    assert (run / "checkpoints" / "best.pt").exists()
    assert (run / "tensorboard").is_dir()
    assert "validation" in (run / "train.log").read_text()


def test_evaluate_command_prints_the_dice_table(trained_run, synth_collection, tmp_path, capsys):
    from UniversalSeg.cli import main
    out = tmp_path / "dice.json"
    assert main(["evaluate", "--model", trained_run["package"], "--catalog", str(synth_collection),
                 "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["dice"] == pytest.approx(trained_run["validation"]["dice"], abs=1e-6)
    assert "ct-hospital-a/liver" in capsys.readouterr().out


def _train_cmd(catalog, net_file, out, *extra):
    return [sys.executable, "-m", "UniversalSeg", "train", "--catalog", str(catalog), "--config",
            str(net_file), "--out", str(out), "--epochs", "2", "--iterations", "8", "--batch-size", "2",
            "--patch", "32", "--spacing", "5.625", "--workers", "0", "--checkpoint-every", "1",
            "--no-progress", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}


def test_resume_after_sigkill_gives_the_same_weights(synth_collection, tiny_net_file, tmp_path):
    full = tmp_path / "full"
    subprocess.run(_train_cmd(synth_collection, tiny_net_file, full), check=True, env=_env(),
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(synth_collection, tiny_net_file, killed), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                step = load_checkpoint(last)["step"]
            except CheckpointError:
                step = 0
            if step >= 3:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = load_checkpoint(last)["step"]
    assert 3 <= interrupted_at < 16
    subprocess.run(_train_cmd(synth_collection, tiny_net_file, killed, "--resume"), check=True,
                   env=_env(), capture_output=True)
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    assert a["step"] == b["step"] == 16
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert not list((killed / "checkpoints").glob(".*.tmp"))
    assert (killed / "model" / "model.safetensors").exists()


def test_existing_run_is_not_overwritten_and_foreign_checkpoints_are_refused(
        synth_collection, tiny_net_file, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, out / "checkpoints" / "last.pt")
    proc = subprocess.run(_train_cmd(synth_collection, tiny_net_file, out, "--resume"),
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 2 and "is not a UniversalSeg training checkpoint" in proc.stderr
    proc = subprocess.run(_train_cmd(synth_collection, tiny_net_file, out),
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 2 and "pass --resume" in proc.stderr


def test_resume_refuses_changed_settings_unless_allowed_and_logged(synth_collection, tiny_net_file, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_train_cmd(synth_collection, tiny_net_file, out, "--max-steps", "0"),
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 2 and "--max-steps 0: must be at least 1" in proc.stderr
    assert not out.exists()
    subprocess.run(_train_cmd(synth_collection, tiny_net_file, out, "--max-steps", "2"), check=True,
                   capture_output=True, env=_env())
    before = (out / "checkpoints" / "last.pt").read_bytes()
    proc = subprocess.run(_train_cmd(synth_collection, tiny_net_file, out, "--resume", "--max-steps", "3",
                                     "--lr", "0.05", "--seed", "7"), capture_output=True, text=True, env=_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lr: 0.001 -> 0.05" in proc.stderr and "seed: 0 -> 7" in proc.stderr and "--allow-changes" in proc.stderr
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # nothing was trained or written
    proc = subprocess.run(_train_cmd(synth_collection, tiny_net_file, out, "--resume", "--max-steps", "3",
                                     "--lr", "0.05", "--allow-changes"), capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3
    assert "resuming with a changed setting (--allow-changes): lr: 0.001 -> 0.05" in (out / "train.log").read_text()


def test_torchrun_ddp_two_gloo_processes(synth_collection, tiny_net_file, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "UniversalSeg"] + _train_cmd(synth_collection, tiny_net_file, out, "--max-steps", "3")[3:]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3


def test_torchrun_ddp_with_the_click_stage_on_every_second_step(synth_collection, tiny_net_file, tmp_path):
    """DDP reduces every parameter's gradient in every step: with ``click_every`` 2 the steps that
    skip the click stage must still hand DDP its (zero) gradients, or the next step fails."""
    settings = tmp_path / "train.yaml"
    settings.write_text("click_every: 2\n")
    out = tmp_path / "ddp-clicks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "UniversalSeg"] + _train_cmd(synth_collection, tiny_net_file, out, "--max-steps", "3",
                                                "--clicks", "2", "--train-config", str(settings))[3:]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 3 and ckpt["train_config"]["click_every"] == 2
    assert any(k.startswith("prompt.") for k in ckpt["model"])
