"""Storage keys never become user paths; reviewed uploads export to the Kaggle layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from service.__main__ import main as service_main
from service.feedback import export_feedback
from service.intake import create_job
from service.storage import LocalStorage, Storage, StorageKeyError
from study.data.preprocess import decode
from tests.service_support import API_KEY, make_settings


def test_local_storage_is_content_addressed_and_refuses_odd_keys(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    assert isinstance(st, Storage)
    key = st.put(b"hello")
    assert st.put(b"hello") == key and st.get(key) == b"hello" and st.exists(key)
    for bad in ("../../etc/passwd", "/etc/passwd", key.upper(), key + "/..", ""):
        assert not st.exists(bad)
        with pytest.raises(StorageKeyError):
            st.get(bad)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


def test_export_feedback_kaggle_layout(tmp_path: Path, samples_dir: Path, full_res_jpegs) -> None:
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.db import Database

    s = make_settings(tmp_path / "svc")
    db, storage = Database(s.db_url), LocalStorage(s.storage_root)
    jpeg = full_res_jpegs[0].read_bytes()
    dcm = (samples_dir / "dicom" / "chest_CR_MONO1-10-chest.dcm").read_bytes()
    ids = {
        "jpeg": create_job(db, storage, jpeg, "a.jpeg", "jpeg")[0],
        "dcm": create_job(db, storage, dcm, "b.dcm", "dicom")[0],
        "unlabelled": create_job(db, storage, full_res_jpegs[1].read_bytes(), "c", "jpeg")[0],
    }
    key = {"X-API-Key": API_KEY}
    with TestClient(create_app(s)) as c:
        c.put(f"/v1/uploads/{ids['jpeg']}/label", json={"label": "PNEUMONIA"}, headers=key)
        c.put(f"/v1/uploads/{ids['dcm']}/label", json={"label": "NORMAL"}, headers=key)
        out = tmp_path / "feedback"
        counts = export_feedback(s.db_url, storage, out)
        assert counts == {"NORMAL": 1, "PNEUMONIA": 1, "skipped": 0, "gate_rejected": 0}
        files = sorted(p.relative_to(out).parts[:2] for p in out.rglob("*.png"))
        assert files == [("train", "NORMAL"), ("train", "PNEUMONIA")]
        back = decode((next((out / "train" / "PNEUMONIA").glob("*.png"))).read_bytes())
        assert back.pixels.shape[:2] == decode(jpeg).pixels.shape[:2]  # decoded, not resized
        dpng = next((out / "train" / "NORMAL").glob("*.png"))
        assert cv2.imread(str(dpng), cv2.IMREAD_UNCHANGED) is not None  # the DICOM became a PNG
        # a re-review moves the file; re-running is idempotent
        c.put(f"/v1/uploads/{ids['jpeg']}/label", json={"label": "NORMAL"}, headers=key)
    assert service_main(["export-feedback", "--database-url", s.db_url,
                         "--storage-dir", str(s.storage_root), "--out", str(out)]) == 0  # fmt: skip
    assert len(list((out / "train" / "NORMAL").glob("*.png"))) == 2
    assert not list((out / "train" / "PNEUMONIA").glob("*.png"))
    db.dispose()
