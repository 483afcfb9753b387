import subprocess
import sys


def test_network_command_describes_and_runs_a_config(tmp_path):
    from UniversalSeg.cli import main
    assert main(["network", "Resources/Configs/network-small.yaml"]) == 0


def test_network_command_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [a]\nmodalities: [CT]\nharmonization: {norm: foo}\n")
    proc = subprocess.run([sys.executable, "-m", "UniversalSeg", "network", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "harmonization.norm: 'foo' is not one of" in proc.stderr
    assert "Traceback" not in proc.stderr
