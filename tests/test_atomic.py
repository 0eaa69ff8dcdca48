"""Atomic outputs: an interrupted writer leaves the previous file intact (territoria/io.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from territoria.errors import OutputError
from territoria.io import atomic_path, write_atomic, write_bytes_atomic, write_csv, write_parquet

N_ROWS = 400_000

# Writes version 0, 1, 2... of a large table onto one path, forever; each version is a
# column `v` filled with its number, so a reader can tell a complete version from a mix.
WRITER = textwrap.dedent(f"""
    import sys
    import numpy as np
    import pandas as pd
    from territoria.io import write_parquet

    target = sys.argv[1]
    x = np.arange({N_ROWS})
    for i in range(10_000):
        df = pd.DataFrame({{"x": x, "v": np.full({N_ROWS}, i), "noise": np.random.rand({N_ROWS})}})
        write_parquet(df, target)
        print(i, flush=True)
""")


def _temporaries(folder, name):
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and ".tmp" in p.name]


def test_exception_inside_the_block_keeps_the_previous_file(tmp_path):
    target = tmp_path / "table.csv"
    write_csv(pd.DataFrame({"a": [1, 2]}), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            tmp.write_text("a\n3\n", encoding="utf-8")  # half of a new version
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == before
    assert _temporaries(tmp_path, "table.csv") == []  # the partial file is removed


def test_exception_before_the_first_version_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "new.parquet"
    with pytest.raises(ValueError):
        with atomic_path(target):
            raise ValueError("no data")
    assert not target.exists() and _temporaries(target.parent, "new.parquet") == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_names_the_output_and_keeps_its_previous_version(tmp_path):
    target = tmp_path / "predictions.parquet"
    previous = pd.DataFrame({"zone_code": ["01001"], "prediction": [0.5]})
    write_parquet(previous, target)
    table = pd.DataFrame({"zone_code": ["01001", "01002"], "prediction": [0.7, 0.1]})
    # Arrow's writer on a device that is always full: the error a full disk gives it
    with pytest.raises(OutputError) as caught:
        write_atomic(target, lambda tmp: table.to_parquet("/dev/full"))
    message = str(caught.value)
    assert message.startswith(str(target) + ":") and "no space left on the device" in message
    assert ".tmp" not in message  # the output is named, not its temporary file
    pd.testing.assert_frame_equal(pd.read_parquet(target), previous)
    assert _temporaries(tmp_path, target.name) == []


def test_an_input_missing_inside_a_writer_is_not_reported_as_the_output(tmp_path):
    target = tmp_path / "grid_cells.parquet"
    with pytest.raises(FileNotFoundError) as caught:
        write_atomic(target, lambda tmp: pd.read_parquet(tmp_path / "work" / "part-00000.parquet"))
    assert not isinstance(caught.value, OutputError) and "part-00000" in str(caught.value)
    assert not target.exists() and _temporaries(tmp_path, target.name) == []


def test_outputs_are_readable_as_the_umask_allows(tmp_path):
    # mkstemp makes private (0600) files: an output folder shared with planners or served by a
    # web server must get the permissions any new file gets
    mask = os.umask(0o022)
    os.umask(mask)
    write_csv(pd.DataFrame({"a": [1]}), tmp_path / "shared.csv")
    assert (tmp_path / "shared.csv").stat().st_mode & 0o777 == 0o666 & ~mask
    script = ("import os, sys; os.umask(0o027); import pandas as pd; from territoria.io import write_parquet; "
              "write_parquet(pd.DataFrame({'a': [1]}), sys.argv[1])")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "group.parquet")], check=True)
    assert (tmp_path / "group.parquet").stat().st_mode & 0o777 == 0o640


def test_small_files_are_written_whole_with_the_umasks_permissions(tmp_path):
    card = tmp_path / "75056.html"
    assert write_bytes_atomic(card, "<p>Paris</p>".encode()) == card
    assert card.read_text(encoding="utf-8") == "<p>Paris</p>"
    mask = os.umask(0o022)
    os.umask(mask)
    assert card.stat().st_mode & 0o777 == 0o666 & ~mask
    # a new version replaces it; a temporary a killed process of the same id left is taken over
    stale = tmp_path / f".75056.html.{os.getpid()}-{threading.get_ident()}.tmp"
    stale.write_text("half a card", encoding="utf-8")
    write_bytes_atomic(card, "<p>Paris, 2</p>".encode())
    assert card.read_text(encoding="utf-8") == "<p>Paris, 2</p>"
    assert _temporaries(tmp_path, card.name) == []


def test_a_small_file_that_cannot_be_written_names_it_and_keeps_its_previous_version(tmp_path, monkeypatch):
    missing = tmp_path / "zones" / "13055.html"
    with pytest.raises(OutputError) as caught:
        write_bytes_atomic(missing, b"<p>Marseille</p>")
    assert str(caught.value).startswith(str(missing) + ":") and ".tmp" not in str(caught.value)
    card = tmp_path / "13055.html"
    write_bytes_atomic(card, b"<p>Marseille</p>")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputError) as caught:
        write_bytes_atomic(card, b"<p>Marseille, 2</p>")
    assert str(caught.value).startswith(str(card) + ":") and "no space left" in str(caught.value)
    assert card.read_bytes() == b"<p>Marseille</p>" and _temporaries(tmp_path, card.name) == []


@pytest.mark.parametrize("trial", [0, 1])
def test_sigkill_during_write_parquet_keeps_a_complete_version(tmp_path, trial):
    target = tmp_path / "big.parquet"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True)
    try:
        # wait for `trial + 1` complete versions, then for the next one to be half written
        for _ in range(trial + 1):
            assert proc.stdout.readline().strip(), "the writer died before writing a version"
        deadline = time.monotonic() + 120
        while not _temporaries(tmp_path, target.name):
            assert time.monotonic() < deadline, "no write in progress seen"
            assert proc.poll() is None
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    df = pd.read_parquet(target)
    assert len(df) == N_ROWS and df["x"].is_monotonic_increasing
    assert df["v"].nunique() == 1 and df["v"].iloc[0] >= trial  # one whole, earlier version
