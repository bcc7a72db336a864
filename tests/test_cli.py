import json
import subprocess
import sys

import pytest

from neural_ot import cli


def test_demo_writes_picture_and_summary(tmp_path, capsys):
  rc = cli.main(["demo", "--n", "120", "--out", str(tmp_path)])
  assert rc == 0
  png = tmp_path / "sinkhorn_demo.png"
  assert png.stat().st_size > 10_000
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  summary = json.loads((tmp_path / "sinkhorn_demo.json").read_text())
  assert summary["converged"] and summary["marginal_error"] < 1e-3
  # The debiased divergence is below the entropic cost, which is above <P, C>.
  assert summary["sinkhorn_divergence_W2sq_estimate"] < summary["reg_ot_cost"]
  assert summary["primal_cost"] < summary["reg_ot_cost"]
  assert "picture" in capsys.readouterr().out


def test_console_script_rejects_bad_arguments():
  out = subprocess.run([sys.executable, "-m", "neural_ot.cli", "demo", "--source", "nope"],
                       capture_output=True, text=True)
  assert out.returncode == 2 and "invalid choice" in out.stderr
  with pytest.raises(SystemExit):
    cli.main(["demo", "--n", "abc"])
