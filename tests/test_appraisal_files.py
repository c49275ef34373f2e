"""Release files as they come: hostile or damaged archives, and records that cannot be used."""

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from countysync_assets.appraisal.archives import ArchiveError, Limits, extract
from countysync_assets.appraisal.records import LayoutMismatch, read_records
from countysync_assets.resources.district_config import (
    PACKAGED_DISTRICTS,
    DistrictConfigError,
    load_district,
)

HCAD = load_district(PACKAGED_DISTRICTS / "hcad.yaml")
PACS = load_district(PACKAGED_DISTRICTS / "pacs_example.yaml")


def make_zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# --- archives -------------------------------------------------------------------------------

def test_zip_members_are_extracted_and_published(tmp_path):
    archive = make_zip(tmp_path / "r.zip", {"real_acct.txt": b"a\r\n", "deeds.txt": b"d"})
    out = extract(archive, "zip", ["real_acct.txt"], tmp_path / "files")
    assert [p.name for p in out] == ["real_acct.txt"] and out[0].read_bytes() == b"a\r\n"
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["real_acct.txt"]
    assert not list(tmp_path.glob(".files*"))  # no temporary folder left


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "sub/../../evil.txt"])
def test_path_traversal_is_refused_and_nothing_extracted(tmp_path, name):
    archive = make_zip(tmp_path / "r.zip", {"real_acct.txt": b"a", name: b"x"})
    with pytest.raises(ArchiveError, match="the archive was refused"):
        extract(archive, "zip", ["real_acct.txt"], tmp_path / "files")
    assert not (tmp_path / "files").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert not list(tmp_path.glob(".files*"))


def test_a_10000_to_1_member_is_refused_as_a_bomb(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"real_acct.txt": bytes(20_000_000)},
                       zipfile.ZIP_BZIP2)
    info = zipfile.ZipFile(archive).infolist()[0]
    assert info.file_size / info.compress_size > 10_000
    with pytest.raises(ArchiveError, match="expands more than 200:1"):
        extract(archive, "zip", ["real_acct.txt"], tmp_path / "files")
    assert not (tmp_path / "files").exists()


def test_total_size_limit(tmp_path):
    archive = make_zip(tmp_path / "r.zip", {"a.txt": b"x" * 5000, "b.txt": b"y" * 5000},
                       zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="more than 8,000 bytes"):
        extract(archive, "zip", ["*.txt"], tmp_path / "files", Limits(max_bytes=8000))


def test_truncated_and_corrupt_zips_are_refused_and_the_old_files_kept(tmp_path):
    good = make_zip(tmp_path / "good.zip", {"real_acct.txt": b"old"})
    extract(good, "zip", ["real_acct.txt"], tmp_path / "files")
    data = make_zip(tmp_path / "new.zip", {"real_acct.txt": b"new data " * 1000}).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        extract(truncated, "zip", ["real_acct.txt"], tmp_path / "files")
    corrupt = tmp_path / "corrupt.zip"
    at = data.index(b"new data") if b"new data" in data else 40
    corrupt.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        extract(corrupt, "zip", ["real_acct.txt"], tmp_path / "files")
    assert (tmp_path / "files" / "real_acct.txt").read_bytes() == b"old"


def test_tar_links_are_refused_and_tar_gz_and_gz_extract(tmp_path):
    linked = tmp_path / "links.tar"
    with tarfile.open(linked, "w") as tf:
        link = tarfile.TarInfo("real_acct.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(ArchiveError, match="is a link"):
        extract(linked, "tar", ["real_acct.txt"], tmp_path / "files")
    packed = tmp_path / "r.tar.gz"
    with tarfile.open(packed, "w:gz") as tf:
        info = tarfile.TarInfo("CAMA/owners.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    assert extract(packed, "tar.gz", ["owners.txt"], tmp_path / "t")[0].read_bytes() == b"hello"
    single = tmp_path / "PROP.TXT.gz"
    single.write_bytes(gzip.compress(b"fixed"))
    assert extract(single, "gz", ["PROP.TXT"], tmp_path / "g")[0].read_bytes() == b"fixed"
    single.write_bytes(gzip.compress(b"fixed" * 1000)[:-6])
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        extract(single, "gz", ["PROP.TXT"], tmp_path / "g")


def test_a_member_missing_from_the_archive_is_named(tmp_path):
    archive = make_zip(tmp_path / "r.zip", {"owners.txt": b"a"})
    with pytest.raises(ArchiveError, match=r"no member matches \['real_acct.txt'\]; the archive "
                                           "holds owners.txt"):
        extract(archive, "zip", ["real_acct.txt"], tmp_path / "files")


# --- records --------------------------------------------------------------------------------

OWNERS_HEADER = b"acct\tln_num\tname\taka\tpct_own\r\n"


def parse(tmp_path, data: bytes, layout, block_bytes=64):
    path = tmp_path / "owners.txt"
    path.write_bytes(data)
    batches = list(read_records(path, layout, file="owners.txt", block_bytes=block_bytes))
    rows = [r for b in batches for r in b.rows.to_pylist()]
    rejects = [r for b in batches for r in b.rejects.to_pylist()]
    return rows, rejects, batches


def test_every_line_ends_in_the_rows_or_the_rejects_with_its_reason(tmp_path):
    lines = [b'1\t1\tSMITH "BUD\t\t100',  # stray quote: kept as is
             b"0000000000002\t1\tPE\xd1A\t\t50.5",  # cp1252 N with tilde, LF only below
             b"3\tone\tBAD NUMBER\t\t1",
             b"4\t1\tBAD BYTE \x81\t\t1",
             b"5\t1\tTOO FEW",
             b"6\t1\tTOO\tMANY\t1\textra",
             b"7\t1\t\t\t1",  # empty required name
             b"8\t1\tX\t\tabc",
             b"",
             b"1\t1\tSMITH LATER\t\t100",  # a duplicate key: staged, the merge keeps the last
             b"123456789012345\t1\tTOO LONG ACCT\t\t1"]
    data = OWNERS_HEADER + b"\r\n".join(lines[:1]) + b"\r\n" + b"\n".join(lines[1:3]) + b"\n" \
        + b"\r\n".join(lines[3:]) + b"\r\n"
    rows, rejects, _ = parse(tmp_path, data, HCAD.layouts["owners"])
    assert [r["_line"] for r in rows] == [2, 3, 11]
    assert rows[0]["name"] == 'SMITH "BUD' and rows[1]["name"] == "PEÑA"
    assert rows[1]["acct"] == "0000000000002" and rows[0]["acct"] == "0000000000001"
    by_line = {r["line"]: r for r in rejects}
    assert sorted(by_line) == [4, 5, 6, 7, 8, 9, 10, 12]  # with 2, 3, 11: every line 2..12
    assert by_line[4]["field"] == "ln_num" and by_line[4]["raw_value"] == "one"
    assert by_line[4]["reason"] == "not a whole number"
    assert by_line[5]["field"] == "name" and "not valid cp1252" in by_line[5]["reason"]
    assert by_line[6]["reason"] == "3 fields where the layout has 5"
    assert by_line[7]["reason"] == "6 fields where the layout has 5"
    assert by_line[8]["field"] == "name" and by_line[8]["reason"] == "required field is empty"
    assert by_line[9]["field"] == "pct_own" and by_line[9]["raw_value"] == "abc"
    assert by_line[10]["reason"] == "empty line"
    assert by_line[12]["field"] == "acct" and "13 digits" in by_line[12]["reason"]


def test_batches_resume_at_their_checkpoint(tmp_path):
    data = OWNERS_HEADER + b"".join(b"%d\t1\tN%d\t\t1\r\n" % (i, i) for i in range(1, 200))
    rows, _, batches = parse(tmp_path, data, HCAD.layouts["owners"])
    assert len(batches) > 5 and len(rows) == 199
    middle = batches[2]
    path = tmp_path / "owners.txt"
    rest = list(read_records(path, HCAD.layouts["owners"], file="owners.txt", block_bytes=64,
                             offset=middle.end_offset, line=middle.last_line))
    resumed = [r for b in batches[:3] for r in b.rows.to_pylist()] + \
        [r for b in rest for r in b.rows.to_pylist()]
    assert resumed == rows


def test_a_changed_header_fails_with_the_differences(tmp_path):
    data = b"acct\tline_number\tname\taka\tpct_own\tnew_col\r\n1\t1\tA\t\t1\t2\r\n"
    with pytest.raises(LayoutMismatch, match=r"missing \['ln_num'\]; unexpected "
                                             r"\['line_number', 'new_col'\]"):
        parse(tmp_path, data, HCAD.layouts["owners"])


def test_fixed_width_records_are_sliced_typed_and_checked(tmp_path):
    layout = PACS.layouts["prop"]

    def record(prop_id="123", deed="06152021", acreage="1.25", width=layout.record_width):
        text = [" "] * width
        for column, value in (("prop_id", prop_id), ("prop_type_cd", "R"),
                              ("prop_val_yr", "2025"), ("py_addr_state", "tx"),
                              ("legal_acreage", acreage), ("deed_dt", deed)):
            c = next(c for c in layout.columns if c.name == column)
            text[c.start - 1:c.start - 1 + c.width] = value.rjust(c.width)[:c.width]
        return "".join(text)[:width].encode("cp1252")

    data = b"\r\n".join([record(), record(prop_id="12x"), record(deed="13452021"),
                         record(width=100), record(prop_id="77")]) + b"\r\n"
    rows, rejects, _ = parse(tmp_path, data, layout, block_bytes=1 << 20)
    assert [(r["prop_id"], r["py_addr_state"], r["legal_acreage"], str(r["deed_dt"]))
            for r in rows] == [(123, "TX", 1.25, "2021-06-15"), (77, "TX", 1.25, "2021-06-15")]
    assert [(r["line"], r["field"]) for r in rejects] == [(2, "prop_id"), (3, "deed_dt"),
                                                         (4, None)]
    assert rejects[2]["reason"] == \
        f"record is 100 characters; the layout needs {layout.record_width}"


# --- district files -------------------------------------------------------------------------

def test_a_mistake_in_the_district_file_names_its_line_and_field(tmp_path):
    text = (PACKAGED_DISTRICTS / "hcad.yaml").read_text()
    bad = tmp_path / "hcad.yaml"
    bad.write_text(text.replace("{name: ln_num, type: integer, required: true}",
                                "{name: ln_num, type: integr, required: true}", 1))
    line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if "integr," in s)
    with pytest.raises(DistrictConfigError, match=rf"hcad.yaml line {line} "
                                                  r"\(layouts.owners.columns\[1\].type\)"):
        load_district(bad)
    bad.write_text(text.replace("url: https://download.hcad.org/data/CAMA/{year}/Real_acct",
                                "url: https://download.hcad.org/data/CAMA/2025/Real_acct"))
    with pytest.raises(DistrictConfigError, match=r"\(files\[0\].url\): the URL template must "
                                                  "contain {year}"):
        load_district(bad)
