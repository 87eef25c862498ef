"""`AccessFiles` as every data-plane process uses it: several writers appending to one app's access.log,
each whole batch in one write, and rotating it at `log_max_bytes` once, whoever crosses the size."""

from __future__ import annotations

from pathlib import Path

from tako.server.observe.access_log import LOG_NAME, AccessFiles

MAX_BYTES = 1000
LINE_BYTES = 100


def _line(n: int) -> bytes:
    text = f'{{"n":{n},"pad":"'
    return (text + "x" * (LINE_BYTES - len(text) - 3) + '"}\n').encode()


def _logs(tmp_path: Path) -> Path:
    logs = tmp_path / "apps" / "web" / "shared" / "logs"
    logs.mkdir(parents=True)
    return logs


def test_two_writers_share_one_file_and_rotate_it_at_its_size(tmp_path: Path) -> None:
    logs = _logs(tmp_path)
    writers = [AccessFiles(tmp_path, max_bytes=MAX_BYTES, backups=100) for _ in range(2)]
    try:
        for n in range(200):
            writers[n % 2].write({"web": _line(n)})
            # The other writer's lines count too: the batch that takes the file to the size rotates it.
            current = logs / LOG_NAME
            assert not current.exists() or current.stat().st_size < MAX_BYTES
    finally:
        for writer in writers:
            writer.close()
    files = sorted(logs.glob(f"{LOG_NAME}*"))
    seen = [int(line.split(",")[0][5:]) for f in files for line in f.read_text().splitlines()]
    assert sorted(seen) == list(range(200))  # each line once, none lost
    assert all(f.stat().st_size <= MAX_BYTES + LINE_BYTES for f in files)
    assert len(files) >= 200 * LINE_BYTES // (MAX_BYTES + LINE_BYTES)


def test_a_writer_follows_a_rotation_made_by_another(tmp_path: Path) -> None:
    logs = _logs(tmp_path)
    first, second = (AccessFiles(tmp_path, max_bytes=MAX_BYTES, backups=3) for _ in range(2))
    try:
        second.write({"web": _line(0)})  # opens the file
        for n in range(1, MAX_BYTES // LINE_BYTES):
            first.write({"web": _line(n)})  # the last one (both writers' lines) takes the file to the size
        second.write({"web": _line(99)})
    finally:
        first.close()
        second.close()
    assert (logs / LOG_NAME).read_bytes() == _line(99)  # into the new file, not the rotated one
    assert (logs / f"{LOG_NAME}.1").read_text().count("\n") == MAX_BYTES // LINE_BYTES
