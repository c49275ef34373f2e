"""A bad release served by the district's server (a truncated ZIP, a ``../`` member, a
10,000:1 member) fails the import with one clear line and leaves the loaded tables as they
were: a bad night costs the county nothing."""

import io
import zipfile

import pytest
import sqlalchemy as sa

from countysync_assets.cli import main
from countysync_assets.resources.appraisal_release import AppraisalDatabase
from countysync_assets.resources.district_config import load_district
from tests.release_server import ReleaseServer, Served, serve_demo_release

YEAR = 2025


def with_member(good: bytes, name: str, data: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """The good archive's bytes with one more member."""
    buffer = io.BytesIO(good)
    with zipfile.ZipFile(buffer, "a") as zf:
        zf.writestr(zipfile.ZipInfo(name, date_time=(YEAR, 1, 1, 0, 0, 0)), data,
                    compress_type=method)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    """A district served over HTTP on loopback, its good release imported once."""
    root = tmp_path_factory.mktemp("bad_release")
    server = ReleaseServer().start()
    district_file, good = serve_demo_release(server, root, YEAR, 400)
    env = {"COUNTYSYNC_APPRAISAL_DIR": str(root / "data"),
           "COUNTYSYNC_EXPORT_DIR": str(root / "exports")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("COUNTYSYNC_APPRAISAL_DB_URL", raising=False)
        patch.delenv("DAGSTER_HOME", raising=False)
        assert main(["appraisal-import", "--config", str(district_file), "--year", str(YEAR)]) == 0
        db = AppraisalDatabase(export_dir=env["COUNTYSYNC_EXPORT_DIR"])
        yield server, good, district_file, db.tables(load_district(district_file))
    server.stop()


def snapshot(tables) -> dict[str, list]:
    with tables.engine.connect() as conn:
        return {name: conn.execute(sa.text(f"SELECT * FROM {tables._t(name)} ORDER BY 1, 2, 3"))
                .all() for name in ("property_records", "owners", "import_runs")}


@pytest.mark.parametrize("bad, says", [
    ("truncated", "damaged or truncated"),
    ("traversal", "'../evil.txt' is a path leaving the folder (..)"),
    ("bomb", "expands more than 200:1"),
])
def test_a_bad_release_fails_with_one_line_and_changes_nothing(county, capsys, bad, says):
    server, good, district_file, tables = county
    before = snapshot(tables)
    assert len(before["property_records"]) == 400
    body = good["Real_acct_owner.zip"]
    served = {"truncated": body[: len(body) // 2],
              "traversal": with_member(body, "../evil.txt", b"owned"),
              "bomb": with_member(body, "zeros.txt", bytes(20_000_000), zipfile.ZIP_BZIP2)}[bad]
    if bad == "bomb":  # the member the district reads is the bomb
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("real_acct.txt", bytes(20_000_000), compress_type=zipfile.ZIP_BZIP2)
            zf.writestr("owners.txt", b"", compress_type=zipfile.ZIP_DEFLATED)
        served = buffer.getvalue()
    server.files[f"/data/CAMA/{YEAR}/Real_acct_owner.zip"] = Served(served)
    capsys.readouterr()
    try:
        code = main(["appraisal-import", "--config", str(district_file), "--year", str(YEAR)])
    finally:
        server.files[f"/data/CAMA/{YEAR}/Real_acct_owner.zip"] = Served(body)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("countysync appraisal-import: ") and says in err[-1], err[-3:]
    assert snapshot(tables) == before
