"""docs/models.md's model table says what the registry says: one row per registered model, with
its registered parameter count and default input (the registry sweep checks the counts
themselves against the built models)."""

import pathlib
import re

from jaxcnn import models

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "models.md"
ROW = re.compile(
    r"^\| `(?P<name>[^`]+)` \| (?P<params>[\d,]+) \| [^|]* \| (?P<input>\d+x\d+x\d+) \|"
)


def test_model_table_matches_the_registry():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m["name"] not in rows, f"{m['name']} twice in docs/models.md"
            rows[m["name"]] = (int(m["params"].replace(",", "")), m["input"])
    registered = set(models.list_models())
    assert set(rows) == registered, (
        f"docs/models.md lacks {sorted(registered - set(rows))}, lists unregistered "
        f"{sorted(set(rows) - registered)} (python -m experiments.model_table prints the rows)"
    )
    for name, (params, size) in rows.items():
        info = models.model_info(name)
        h, w, c = info.input_size
        assert (params, size) == (info.params, f"{h}x{w}x{c}"), name
