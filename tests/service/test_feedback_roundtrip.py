"""Label -> export-feedback -> --extra-data: reviewed uploads reach training, and only training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, tiny_study_args
from tests.service_support import API_KEY, Stack


def test_reviewed_uploads_join_train_only(
    sqlite_stack: Stack, full_res_jpegs: list[Path], data_dir: Path, tmp_path: Path
) -> None:
    from service.settings import Settings

    labelled = {}
    for path, label in zip(full_res_jpegs[:2], ("NORMAL", "PNEUMONIA"), strict=True):
        r = sqlite_stack.upload(path.read_bytes(), name=path.name)
        assert r.status_code == 202, r.text
        body = sqlite_stack.wait_status(r.json()["id"], ("done", "rejected"))
        upload_id = body["upload_id"]
        put = sqlite_stack.client.put(
            f"/v1/uploads/{upload_id}/label", json={"label": label}, headers={"X-API-Key": API_KEY}
        )
        assert put.status_code in (200, 204), put.text
        labelled[upload_id] = label

    s = Settings(data_dir=Path(sqlite_stack.env["DATA_DIR"]))
    out = tmp_path / "feedback"
    exp = subprocess.run(
        [sys.executable, "run_study.py", "data", "export-feedback", "--database-url", s.db_url,
         "--storage-dir", str(s.storage_root), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert exp.returncode == 0, exp.stderr[-2000:]
    exported = sorted(out.rglob("*.png"))
    assert {p.parent.name for p in exported} == {"NORMAL", "PNEUMONIA"}
    assert all(p.parent.parent.name == "train" for p in exported)

    args = tiny_study_args(data_dir, tmp_path, name="feedback", budget=1)
    args[args.index("--families") + 1] = "custom_cnn"
    study = subprocess.run(
        [sys.executable, "run_study.py", *args, "--extra-data", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
    splits = json.loads((tmp_path / "results" / "feedback" / "splits.json").read_text())
    feedback_files = {str(p.resolve()) for p in exported}
    assert feedback_files <= set(splits["files"]["train"])
    assert not feedback_files & (set(splits["files"]["val"]) | set(splits["files"]["test"]))
    assert any("reviewed uploads" in n for n in splits["notes"])
    report = (tmp_path / "results" / "feedback" / "report.html").read_text()
    assert "reviewed upload" in report
