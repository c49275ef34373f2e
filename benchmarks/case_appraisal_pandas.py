"""Plain pandas: extract the ZIP, read the whole real_acct.txt with read_csv (tab, quoting
off, the account kept as text), write it with to_sql in chunks of 10,000."""

import csv
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from benchmarks.appraisal import TABLE, extract_real_acct, real_acct_layout


def run(step: str, workdir: Path, archive: str, url: str) -> None:
    layout = real_acct_layout()
    path = extract_real_acct(Path(archive), workdir)
    frame = pd.read_csv(path, sep=layout.delimiter, encoding=layout.encoding,
                        quoting=csv.QUOTE_NONE, dtype={"acct": str})
    engine = sa.create_engine(url)
    frame.to_sql(TABLE, engine, if_exists="replace", index=False, chunksize=10_000)
    engine.dispose()
