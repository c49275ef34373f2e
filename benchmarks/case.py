"""One benchmark case in its own process: ``python -m benchmarks.case TOOL STEP WORKDIR URL
PARTITIONS``. Prints the wall seconds of the work itself (imports excluded) as JSON."""

import importlib
import json
import os
import sys
import time
from pathlib import Path

MODULES = {"countysync": "benchmarks.case_countysync",
           "seeds-pandas": "benchmarks.case_seeds_pandas",
           "dlt": "benchmarks.case_dlt"}


def main() -> None:
    tool, step, workdir, source_url, partitions = sys.argv[1:6]
    os.environ["DAGSTER_HOME"] = str(Path(workdir) / "dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(MODULES[tool])  # imports are not part of the timing
    started = time.perf_counter()
    module.run(step, Path(workdir), source_url, partitions)
    print(json.dumps({"wall_s": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
