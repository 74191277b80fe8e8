"""python -m experiments.accelerator_report --quick on the CPU: every section runs and
says what it found, so the script cannot rot between the rare GPU runs."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("devices", "roundtrip", "two_process", "cpu_to_device", "bench_decode",
            "bench_train")


def test_quick_report_writes_every_section(tmp_path):
  out = tmp_path / "acc"
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  proc = subprocess.run(
      # One kind, nested: an M2T whose full schedule is M2T's very bytes, plus the
      # size schedules bench_decode runs for it (DECODE_ARGS). Each further kind
      # adds its compilations in four processes (~60 s on 2 cores), no new path.
      [sys.executable, "-m", "experiments.accelerator_report", "--quick", "--kinds", "nested",
       "--output-dir", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(out / "report.json"))
  sections = report["sections"]
  assert list(sections) == list(SECTIONS)
  failed = {k: v for k, v in sections.items() if v["status"] != "ok"}
  assert not failed, json.dumps(failed, indent=1)[:3000]
  assert report["quick"] and report["kinds"] == ["nested"]

  assert sections["devices"]["platform"] == "cpu"
  assert sections["devices"]["num_devices"] >= 1
  # decoded == the encoder's reconstruction
  assert sections["roundtrip"]["nested"]["exact"] is True
  assert sections["roundtrip"]["nested"]["bytes"] > 53  # header + payload
  # The JAX_LOG_COMPILES lines were found and parsed (the report's compile column).
  assert sections["roundtrip"]["compiles"] > 0 and sections["roundtrip"]["compile_s"] > 0
  for name in ("two_process", "cpu_to_device"):  # the decoder's process said 'exact'
    assert sections[name]["decode"]["nested"] == "exact"
    assert sections[name]["encode"]["status"] == "ok"

  records = sections["bench_decode"]["records"]
  assert [r["model"] for r in records] == ["nested", "nested"]
  # DECODE_ARGS: size schedules full and fast
  assert records[0]["size_schedule"] != records[1]["size_schedule"]
  for r in records:
    assert 0 < r["transformer_s"] < r["full_decode_s"]

  results = sections["bench_train"]["results"]
  # --quick trains float32 only (test_precision.py covers bfloat16 training).
  assert [r["compute_dtype"] for r in results] == ["float32"]
  assert all(r["steps_per_sec"] > 0 and r["images_per_sec"] > 0 for r in results)

  md = (out / "report.md").read_text()
  for name in SECTIONS:
    assert f"| {name} | ok |" in md
  assert "nested: exact" in md
