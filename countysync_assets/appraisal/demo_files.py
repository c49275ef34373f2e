"""Demo release files in the districts' real formats, so the pipeline runs without the internet.

``write_demo_release`` writes, for N accounts of a tax year, HCAD-format ZIPs
(``Real_acct_owner.zip``: real_acct.txt and owners.txt; ``Real_building_land.zip``:
building_res.txt and extra_features.txt; tab-delimited, header row, CRLF, Windows-1252 with
accented owner names and stray double quotes) and a PACS-style ``APPRAISAL_EXPORT.zip`` with a
fixed-width PROP.TXT, plus district files pointing at them with ``file://`` URLs. The same
seed gives the same files; another ``revision`` changes the values of about 1 account in 20,
like a supplement re-published under the same name.
"""

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from countysync_assets.resources.district_config import PACKAGED_DISTRICTS, load_district

HCAD_URL = "https://download.hcad.org"
PACS_URL = "https://example-cad.org/exports"
SURNAMES = np.array(["SMITH", "GARCIA", "NGUYEN", "MUÑOZ", "PEÑA", "JOHNSON", "O'BRIEN",
                     "WILLIAMS", "HERNÁNDEZ", "BROWN", "LÓPEZ", "DAVIS", "MARTÍNEZ", "TRAN"])
GIVEN = np.array(["JOHN", "MARÍA", "JOSÉ", "LINDA", "MICHAEL", "ANH", "ROBERT", "ZOË",
                  "JAMES", "PATRICIA", 'WILLIAM "BILL"', "DEBORAH"])
STREETS = np.array(["MAIN", "WESTHEIMER", "BELLAIRE", "KIRBY", "TELEPHONE", "LITTLE YORK",
                    "ALDINE BENDER", "GESSNER", "FM 1960", "CAFÉ"])
CITIES = np.array(["HOUSTON", "PASADENA", "BAYTOWN", "KATY", "HUMBLE", "TOMBALL"])


def _district_file(package_name: str, out: Path, real: str, local: str) -> Path:
    text = (PACKAGED_DISTRICTS / package_name).read_text()
    path = out / package_name.replace(".yaml", "_demo.yaml")
    path.write_text(f"# the demo copy of {package_name}: its URLs point at files on this "
                    "machine\n" + text.replace(real, local))
    load_district(path)  # the demo's district file is valid, or this fails here
    return path


def _lines(frame: pd.DataFrame, header: bool) -> bytes:
    """Tab-delimited, CRLF, Windows-1252, no quoting: the HCAD text format."""
    rows = frame.astype(str).agg("\t".join, axis=1)
    text = ("\t".join(frame.columns) + "\r\n" if header else "") + "\r\n".join(rows) + "\r\n"
    return text.encode("cp1252")


def _money(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return (rng.lognormal(np.log(scale), 0.6, n) // 10 * 10).astype(np.int64)


def _accounts(n: int, seed: int, revision: int, year: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    acct = np.char.zfill(np.sort(rng.choice(10**12, n, replace=False)).astype(str), 13)
    owner = np.char.add(np.char.add(rng.choice(SURNAMES, n), " "), rng.choice(GIVEN, n))
    street = rng.choice(STREETS, n)
    num = rng.integers(100, 20000, n)
    city = rng.choice(CITIES, n)
    land, bld = _money(rng, n, 60000), _money(rng, n, 180000)
    xf = (rng.random(n) < 0.3) * _money(rng, n, 8000)
    if revision:  # a supplement: some values change
        changed = np.random.default_rng(seed + revision).random(n) < 0.05
        bld = np.where(changed, bld + 1000 * revision, bld)
    appr = land + bld + xf
    blank = np.full(n, "")
    real = {
        "acct": acct, "yr": np.full(n, year), "mailto": owner,
        "mail_addr_1": np.char.add(np.char.add(num.astype(str), " "), street), "mail_addr_2": blank,
        "mail_city": city, "mail_state": np.full(n, "TX"),
        "mail_zip": rng.integers(77001, 77599, n), "mail_country": blank, "undeliverable": blank,
        "str_pfx": blank, "str_num": num, "str_num_sfx": blank, "str": street,
        "str_sfx": np.full(n, "ST"), "str_sfx_dir": blank, "str_unit": blank,
        "site_addr_1": np.char.add(np.char.add(num.astype(str), " "), street),
        "site_addr_2": city, "site_addr_3": rng.integers(77001, 77599, n),
        "state_class": rng.choice(["A1", "A2", "B1", "F1", "C1"], n),
        "school_dist": rng.choice(["01", "25", "48"], n), "map_facet": rng.integers(4000, 6000, n),
        "key_map": rng.integers(400, 700, n), "Neighborhood_Code": rng.integers(1000, 9999, n),
        "Neighborhood_Grp": rng.integers(1, 400, n), "Market_Area_1": rng.integers(100, 999, n),
        "Market_Area_1_Dscr": blank, "Market_Area_2": blank, "Market_Area_2_Dscr": blank,
        "econ_area": blank, "econ_bld_class": blank, "center_code": blank,
        "yr_impr": rng.integers(1940, year, n), "yr_annexed": blank, "splt_dt": blank,
        "dsc_cd": blank, "nxt_bld": rng.integers(1, 3, n), "bld_ar": rng.integers(800, 5000, n),
        "land_ar": rng.integers(3000, 20000, n),
        "acreage": np.round(rng.random(n) * 2, 4), "Cap_acct": blank, "shared_cad": blank,
        "land_val": land, "bld_val": bld, "x_features_val": xf, "ag_val": np.zeros(n, int),
        "assessed_val": appr, "tot_appr_val": appr, "tot_mkt_val": appr,
        "prior_land_val": land, "prior_bld_val": bld, "prior_x_features_val": xf,
        "prior_ag_val": np.zeros(n, int), "prior_tot_appr_val": appr, "prior_tot_mkt_val": appr,
        "new_construction_val": np.zeros(n, int), "tot_rcn_val": bld,
        "value_status": rng.choice(["Noticed", "Certified"], n),
        "noticed": rng.choice(["Y", "N"], n), "notice_dt": np.full(n, f"{year}-04-01"),
        "protested": rng.choice(["Y", "N"], n, p=[0.1, 0.9]),
        "certified_date": np.full(n, f"{year}-07-25"), "rev_dt": blank, "rev_by": blank,
        "new_own_dt": blank,
        "lgl_1": np.char.add("LT ", rng.integers(1, 40, n).astype(str)),
        "lgl_2": np.char.add("BLK ", rng.integers(1, 20, n).astype(str)),
        "lgl_3": rng.choice(["OAK FOREST SEC 2", "BRAESWOOD PLACE", 'THE "HEIGHTS"'], n),
        "lgl_4": blank, "jurs": rng.choice(["001 040 041", "025 042"], n)}
    owners_per = rng.integers(1, 4, n)
    oacct = np.repeat(acct, owners_per)
    ln = np.concatenate([np.arange(1, k + 1) for k in owners_per])
    m = len(oacct)
    owners = {"acct": oacct, "ln_num": ln,
              "name": np.char.add(np.char.add(rng.choice(SURNAMES, m), " "),
                                  rng.choice(GIVEN, m)),
              "aka": np.where(rng.random(m) < 0.05, "ETAL", ""),
              "pct_own": np.round(100 / np.repeat(owners_per, owners_per), 4)}
    bld_per = rng.integers(0, 3, n)
    bacct = np.repeat(acct, bld_per)
    b = len(bacct)
    erected = rng.integers(1940, year, b)
    buildings = {"acct": bacct,
                 "bld_num": np.concatenate([np.arange(1, k + 1) for k in bld_per] or [[]]),
                 "imprv_type": rng.choice(["1001", "1002", "1003"], b),
                 "building_style_code": rng.choice(["101", "102", "107"], b),
                 "bldg_class": rng.choice(["A", "B", "C"], b), "qa_cd": rng.choice(["AV", "GD"], b),
                 "cndtn_cd": rng.choice(["AV", "GD", "FR"], b), "date_erected": erected,
                 "yr_remodel": np.where(rng.random(b) < 0.2, erected + 10, 0),
                 "eff_yr": erected, "heat_ar": rng.integers(800, 4000, b),
                 "base_ar": rng.integers(800, 3000, b), "gross_ar": rng.integers(900, 5000, b),
                 "sty": rng.choice(["1", "1.5", "2"], b)}
    xf_per = rng.integers(0, 4, n)
    xacct = np.repeat(acct, xf_per)
    x = len(xacct)
    features = {"acct": xacct,
                "ln_num": np.concatenate([np.arange(1, k + 1) for k in xf_per] or [[]]),
                "bld_num": rng.integers(1, 3, x),
                "cd": rng.choice(["RRP1", "RPA2", "RFP1"], x),
                "dscr": rng.choice(["POOL", "PATIO", "FIREPLACE", "DETACHED GARAGE"], x),
                "grade": rng.choice(["C", "B", "A"], x), "cond_cd": rng.choice(["AV", "GD"], x),
                "length": rng.integers(5, 40, x), "width": rng.integers(5, 30, x),
                "units": rng.integers(1, 600, x), "unit_price": np.round(rng.random(x) * 40, 2),
                "act_yr": rng.integers(1960, year, x), "eff_yr": rng.integers(1960, year, x),
                "val": rng.integers(500, 40000, x)}
    return {"real_acct.txt": pd.DataFrame(real), "owners.txt": pd.DataFrame(owners),
            "building_res.txt": pd.DataFrame(buildings),
            "extra_features.txt": pd.DataFrame(features)}


def _fixed_width(frame: pd.DataFrame, year: int) -> bytes:
    """PROP.TXT records cut to the pacs_example layout."""
    layout = load_district(PACKAGED_DISTRICTS / "pacs_example.yaml").layouts["prop"]
    values = {"prop_id": frame["acct"].str[-9:].astype(int).astype(str),
              "prop_type_cd": "R", "prop_val_yr": str(year), "geo_id": frame["acct"],
              "py_owner_name": frame["mailto"], "py_addr_line1": frame["mail_addr_1"],
              "py_addr_city": frame["mail_city"], "py_addr_state": "tx",
              "py_addr_zip": frame["mail_zip"].astype(str), "situs_street": frame["str"],
              "situs_city": frame["site_addr_2"],
              "legal_desc": frame["lgl_1"] + " " + frame["lgl_2"] + " " + frame["lgl_3"],
              "land_val": frame["land_val"].astype(str), "imprv_val": frame["bld_val"].astype(str),
              "market_value": frame["tot_mkt_val"].astype(str),
              "legal_acreage": frame["acreage"].astype(str),
              "deed_dt": "0615" + str(year - 3)}
    cut = pd.DataFrame({c.name: pd.Series(values[c.name], index=frame.index).astype(str)
                        .str.slice(0, c.width).str.ljust(c.width)
                        if c.type == "text" else
                        pd.Series(values[c.name], index=frame.index).astype(str).str.rjust(c.width)
                        for c in layout.columns})
    return ("\r\n".join(cut.agg("".join, axis=1)) + "\r\n").encode("cp1252")


def _zip(path: Path, members: dict[str, bytes], year: int) -> None:
    """A ZIP whose bytes depend only on its contents (same seed, same file, same SHA-256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(year, 1, 1, 0, 0, 0)), data,
                        compress_type=zipfile.ZIP_DEFLATED)
    temp.replace(path)


def write_demo_release(out: Path, accounts: int, year: int, seed: int = 7,
                       revision: int = 0) -> dict[str, Path]:
    """Write the demo ZIPs for ``year`` under ``out``; the district files that read them."""
    out = out.resolve()
    frames = _accounts(accounts, seed, revision, year)
    files = {name: _lines(frame, header=True) for name, frame in frames.items()}
    cama = out / "data" / "CAMA" / str(year)
    _zip(cama / "Real_acct_owner.zip", {n: files[n] for n in ("real_acct.txt", "owners.txt")}, year)
    _zip(cama / "Real_building_land.zip",
         {n: files[n] for n in ("building_res.txt", "extra_features.txt")}, year)
    _zip(out / "pacs" / str(year) / "APPRAISAL_EXPORT.zip",
         {"PROP.TXT": _fixed_width(frames["real_acct.txt"], year)}, year)
    return {"hcad": _district_file("hcad.yaml", out, HCAD_URL, out.as_uri()),
            "pacs_example": _district_file("pacs_example.yaml", out, PACS_URL,
                                           (out / "pacs").as_uri())}


def write_property_file(path: Path, accounts: int, year: int, seed: int = 7,
                        chunk: int = 100_000) -> Path:
    """A real_acct.txt of ``accounts`` distinct accounts written ``chunk`` at a time, so a
    county-sized file (the benchmark's 1.6 million rows) needs no more memory than a chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for start in range(0, accounts, chunk):
            n = min(chunk, accounts - start)
            frame = _accounts(n, seed + start, 0, year)["real_acct.txt"]
            frame["acct"] = np.char.zfill(np.arange(start + 1, start + n + 1).astype(str), 13)
            out.write(_lines(frame, header=start == 0))
    return path
