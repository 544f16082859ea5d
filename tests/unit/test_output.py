"""Tables for programs (csv, json) are written a slice of rows at a time, and read back as one table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from client.commands import options


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"rank": range(1, n + 1), "file": [f"IMG_{i:05}.jpg" for i in range(n)],
                         "score": [1 / (i + 1) for i in range(n)], "error": [""] * n})  # fmt: skip


@pytest.mark.parametrize("rows", [0, 1, 7, 25])
def test_sliced_csv_and_json_are_the_whole_table_and_read_back(tmp_path: Path, monkeypatch, rows: int) -> None:
    monkeypatch.setattr(options, "ROWS_PER_WRITE", 3)  # 25 rows: nine slices
    table = frame(rows)
    for fmt, whole in (("csv", table.to_csv(index=False)), ("json", table.to_json(orient="records", indent=2) + "\n")):
        out = tmp_path / f"out.{fmt}"
        options.write_frame(argparse.Namespace(format=fmt, output=out), table)
        assert out.read_text() == whole or (rows == 0 and fmt == "json" and json.loads(out.read_text()) == [])
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(table.to_json(orient="records"))
    assert pd.read_csv(tmp_path / "out.csv", keep_default_na=False).shape == (rows, 4)


def test_without_output_the_table_goes_to_stdout(capsys) -> None:
    options.write_frame(argparse.Namespace(format="csv", output=None), frame(2))
    assert capsys.readouterr().out.splitlines() == ["rank,file,score,error", "1,IMG_00000.jpg,1.0,", "2,IMG_00001.jpg,0.5,"]
    options.write_frame(argparse.Namespace(format="table", output=None), frame(2), table="a grid\n")
    assert capsys.readouterr().out == "a grid\n"


@pytest.mark.parametrize("fmt", ["markdown", "table"])
def test_tables_for_people_show_an_unranked_row_with_empty_cells(capsys, fmt: str) -> None:
    """A failed file has no rank (pandas NA) and no score: tabulate itself raises on NA."""
    table = frame(2).astype({"rank": "Int64"})
    table.loc[1, ["rank", "score", "error"]] = [pd.NA, float("nan"), "decode_error: not an image"]
    options.write_frame(argparse.Namespace(format=fmt, output=None), table)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "IMG_00001.jpg" in last and "decode_error: not an image" in last and "nan" not in last.lower()
