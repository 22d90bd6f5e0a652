"""CPU rehearsal of scripts/gpu_session.sh (CONVLAB_SESSION_REHEARSAL=1: Triton's interpreter, tiny
sizes, a fake device name), so that the one command for a lent GPU cannot rot between the rare GPU
sessions. The times it records are not measurements; only the plumbing is checked: phases, budget,
wheel install, resume, the output folder's files, the exit trap."""
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_session.sh")
FAKE = "rehearsal-fake-H200"
FILES = {"env.txt", "session.log", "tests.log", "bench.json", "bench.csv", "bench.md", "train.json", "train.log"}


def _probe_wheel(folder):
    """A minimal pure-Python wheel (one module), to check the session's `pip install --no-index` step."""
    name, files = "convlab_rehearsal_probe", {}
    files[f"{name}/__init__.py"] = b"VALUE = 42\n"
    di = f"{name}-0.1.dist-info"
    files[f"{di}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode()
    files[f"{di}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()] + [f"{di}/RECORD,,"]
    files[f"{di}/RECORD"] = ("\n".join(record) + "\n").encode()
    os.makedirs(folder, exist_ok=True)
    with zipfile.ZipFile(os.path.join(folder, f"{name}-0.1-py3-none-any.whl"), "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return name


def _env(tmp_path, **extra):
    env = dict(os.environ, OUT=str(tmp_path / "out"), CONVLAB_SESSION_REHEARSAL="1", CONVLAB_FAKE_DEVICE=FAKE,
               CONVLAB_COMMIT="rehearsal0commit", PYTHONPATH=ROOT, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.update(extra)
    return env


def _earlier_results(path):
    """An earlier partial run of the same device, code commit and timing settings: its deform case must
    be kept, not measured again. SYNTHETIC values (marked by ours_median_ms = 12345)."""
    from benchmarks import bench
    from benchmarks.suite import build_suite

    case = next(c for c in build_suite(suite="tiny") if c.id == "deform/tiny/c8_6_v2/b1/fp32/nchw")
    rows = [dict(case.as_dict(), mode=m, error="", ours_median_ms=12345.0, peer_median_ms=1.0, ratio=1 / 12345.0)
            for m in bench.MODES]
    env = {"device": FAKE, "code_commit": "rehearsal0commit", "timing": {"warmup_ms": 0, "rep_ms": 0}}
    path.write_text(json.dumps({"environment": env, "results": rows}))


def test_rehearsal_runs_every_phase(tmp_path):
    probe = _probe_wheel(tmp_path / "wheels")
    _earlier_results(tmp_path / "earlier.json")
    t0 = time.time()
    proc = subprocess.run(["bash", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=_env(tmp_path, CONVLAB_SESSION_WHEELS=str(tmp_path / "wheels"),
                                   CONVLAB_RESUME=str(tmp_path / "earlier.json")))
    took = time.time() - t0
    out = tmp_path / "out"
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log
    assert took < 240, f"rehearsal took {took:.0f} s (its budget is 240 s)"

    # at most 8 flat files with plain names, the ones the README lists
    entries = os.listdir(out)
    assert set(entries) == FILES and all(re.fullmatch(r"[A-Za-z0-9._-]+", e) and (out / e).is_file() for e in entries)

    assert re.search(r"phases: wheels=0 env=0 tests=0 bench=0 train=0 hydra=(0|missing)", log), log
    assert f"installed from {tmp_path / 'wheels'}: {probe}" in log
    env_txt = (out / "env.txt").read_text()
    assert f"fake device: {FAKE}" in env_txt and "rehearsal0commit (from CONVLAB_COMMIT)" in env_txt
    assert "torch " in env_txt and "triton " in env_txt and "torchvision " in env_txt
    assert re.search(r"=+ 2 passed", (out / "tests.log").read_text())

    res = json.loads((out / "bench.json").read_text())
    e = res["environment"]
    assert e["device"] == FAKE and e["rehearsal"] and e["code_commit"] == "rehearsal0commit"
    assert (e["cases_selected"], e["cases_resumed"], e["cases_measured"], e["complete"]) == (3, 1, 2, True)
    rows = {(r["id"], r["mode"]): r for r in res["results"]}
    assert len(rows) == 9 and {i.split("/")[0] for i, _ in rows} == {"deform", "depthwise", "standard"}
    for (cid, mode), r in rows.items():
        if cid.startswith("deform/"):
            assert r["ours_median_ms"] == 12345.0 and r["resumed_from"] == "earlier.json"
        else:  # measured now: both sides timed, no error
            assert r["error"] == "" and r["ours_median_ms"] > 0 and r["peer_median_ms"] > 0, r
    assert len((out / "bench.csv").read_text().splitlines()) == 1 + 9
    assert "REHEARSAL, NOT A MEASUREMENT" in (out / "bench.md").read_text()

    train = json.loads((out / "train.json").read_text())
    runs = [(r["variant"], r["backend"]) for r in train["runs"]]
    assert runs == [("standard", "reference"), ("depthwise_separable", "reference"), ("deformable", "reference"),
                    ("standard", "triton")]
    for r in train["runs"]:
        assert r["error"] == "" and r["backend_ran"] == r["backend"] and r["loss_finite"] and r["images_per_s"] > 0
    # same seed, same batches: the Triton run of the standard model starts from the reference run's loss
    assert train["runs"][3]["loss_first"] == pytest.approx(train["runs"][0]["loss_first"], rel=1e-3)
    if "hydra=0" in log:
        assert "=== hydra smoke summary.json" in (out / "train.log").read_text()


def test_terminated_session_still_writes_what_exists(tmp_path):
    """A TERM during the benchmark: the trap stops the phase, renders bench.md from the partial
    bench.json and writes the summary; later phases never start."""
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(tmp_path, CONVLAB_SESSION_WARM="0", CONVLAB_SESSION_WHEELS="skip",
                                     CONVLAB_SESSION_TESTS="skip"))  # the test above rehearses those
    try:
        deadline = time.time() + 120
        while not (out / "bench.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (out / "bench.json").exists(), "the benchmark phase never started"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (out / "session.log").read_text()
    assert proc.returncode == 130, output
    summary = log.split("summary:")[1].split("\n")[0]
    assert "interrupted" in log and "env=0 tests=skipped" in summary and "train=" not in summary, log
    entries = set(os.listdir(out))
    assert {"env.txt", "session.log", "bench.json", "bench.md"} <= entries <= FILES
    assert "train.json" not in entries
    assert "REHEARSAL" in (out / "bench.md").read_text()


def test_readme_documents_the_session_files_and_the_unmeasured_table():
    from benchmarks import report

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("### GPU session")[1].split("\n## ")[0]
    for name in FILES:
        assert f"`{name}`" in section, name
    # the table is report.readme_table's output for no measurement at all, until a GPU session fills it
    assert report.readme_table({"sources": [], "results": []}) in section
