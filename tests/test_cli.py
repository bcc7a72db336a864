import json
import subprocess
import sys

import numpy as np
import pytest

from neural_ot import cli, load_map


def _is_png(path):
  return path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_learns_a_map_and_writes_picture(tmp_path, capsys):
  rc = cli.main(["demo", "--steps", "300", "--n", "500", "--quiet", "--out", str(tmp_path)])
  assert rc == 0
  assert _is_png(tmp_path / "neural_map_demo.png")
  summary = json.loads((tmp_path / "neural_map_demo.json").read_text())
  # The learned map brings the source much closer to the target than it was.
  assert summary["S_eps(T(x), y) after"] < 0.5 * summary["S_eps(x, y) before"]
  assert 0.3 < summary["w2_dual_estimate"] < 1.2
  mp = load_map(str(tmp_path / "map.msgpack"))
  assert mp.dim == 2 and abs(mp.w2 - summary["w2_dual_estimate"]) < 1e-6
  assert "picture" in capsys.readouterr().out


def test_fit_reads_npy_and_csv(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 2))
  np.save(tmp_path / "src.npy", x)
  np.savetxt(tmp_path / "tgt.csv", 0.5 * x + 2.0, delimiter=",", header="a,b")
  out = tmp_path / "run"
  rc = cli.main(["fit", str(tmp_path / "src.npy"), str(tmp_path / "tgt.csv"), "--steps", "50",
                 "--quiet", "--out", str(out)])
  assert rc == 0
  mp = load_map(str(out / "map.msgpack"))
  np.testing.assert_allclose(mp.transport(x[:20]), 0.5 * x[:20] + 2.0, atol=0.05)
  assert np.load(out / "transported.npy").shape == (400, 2)
  assert (out / "checkpoints" / "checkpoint.msgpack").is_file()
  assert _is_png(out / "map.png")


def test_fit_reports_bad_input(tmp_path, capsys):
  np.save(tmp_path / "a.npy", np.zeros((50, 2)))
  np.save(tmp_path / "b.npy", np.zeros((50, 3)))
  rc = cli.main(["fit", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--out",
                 str(tmp_path / "o"), "--quiet"])
  assert rc == 2 and "same dimension" in capsys.readouterr().err
  with pytest.raises(SystemExit, match="no such file"):
    cli.main(["fit", str(tmp_path / "nope.npy"), str(tmp_path / "b.npy"), "--out", "o"])


def test_sinkhorn_command_writes_picture_and_summary(tmp_path, capsys):
  rc = cli.main(["sinkhorn", "--n", "120", "--out", str(tmp_path)])
  assert rc == 0
  assert _is_png(tmp_path / "sinkhorn_demo.png")
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
    cli.main(["sinkhorn", "--n", "abc"])
