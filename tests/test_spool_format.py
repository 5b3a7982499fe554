"""The spool's segment format and its recovery, without a broker (issue 11)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from passpost.ingest.spool import Spool, SpoolDirError, SpoolFull, SpoolMetrics
from passpost.ingest.spool_format import (
    HEADER,
    Corrupt,
    Entry,
    Torn,
    decode_entry,
    encode_entry,
    frame,
    read_batch,
    scan,
)


def entry(number: int, topic: str = "pass-postbacks.v1") -> Entry:
    return Entry(topic, f"key-{number % 3}".encode(), f"value-{number}".encode() * 20,
                 [("request_id", f"r{number}".encode())], 1_700_000_000.0 + number)


def test_an_entry_round_trips_with_every_field() -> None:
    for original in (entry(1), Entry("dlq", None, b"", [], 0.5),
                     Entry("t", b"", b"\x00" * 300, [("a", b""), ("\u00e9", b"\xff")], 1.25)):
        assert decode_entry(encode_entry(original)) == original


def test_a_flipped_bit_in_the_middle_is_corrupt_and_the_records_after_it_survive() -> None:
    frames = [frame(encode_entry(entry(n))) for n in range(5)]
    data = bytearray(b"".join(frames))
    middle = sum(len(f) for f in frames[:2]) + HEADER.size + 7
    data[middle] ^= 0x01
    items = [item for _, _, item in scan(bytes(data))]
    assert [item.value for item in items if isinstance(item, Entry)] == [entry(n).value for n in (0, 1, 3, 4)]
    (corrupt,) = [item for item in items if isinstance(item, Corrupt)]
    assert (corrupt.start, corrupt.end) == (sum(map(len, frames[:2])), sum(map(len, frames[:3])))
    assert not [item for item in items if isinstance(item, Torn)]


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size + 3, -1])
def test_a_torn_tail_is_told_apart_from_corruption(cut: int) -> None:
    frames = [frame(encode_entry(entry(n))) for n in range(3)]
    whole = b"".join(frames[:2])
    data = whole + frames[2][:cut]
    items = list(scan(data))
    assert [item for _, _, item in items[:2]] == [entry(0), entry(1)]
    assert items[2] == (len(whole), len(data), Torn(len(whole), len(data)))


def test_a_bad_length_is_not_trusted() -> None:
    frames = [frame(encode_entry(entry(n))) for n in range(3)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 4:len(frames[0]) + 8] = (2**31).to_bytes(4, "big")
    items = [item for _, _, item in scan(bytes(data))]
    assert items == [entry(0), Corrupt(len(frames[0]), len(frames[0]) + len(frames[1])), entry(2)]


def test_read_batch_reads_a_window_and_stops_before_a_bad_record(tmp_path: Path) -> None:
    frames = [frame(encode_entry(entry(n))) for n in range(50)]
    data = bytearray(b"".join(frames))
    bad = sum(map(len, frames[:30]))
    data[bad + HEADER.size + 1] ^= 0xFF
    path = tmp_path / "00000000000000000000.seg"
    path.write_bytes(bytes(data))
    seen: list[Entry | Corrupt | Torn] = []
    position = 0
    while position < len(data):
        items = read_batch(str(path), position, len(data), max_bytes=1000)
        assert items and items[0][0] == position
        seen += [item for _, _, item in items]
        position = items[-1][1]
    assert [item for item in seen if isinstance(item, Entry)] == [entry(n) for n in range(50) if n != 30]
    assert [item for item in seen if not isinstance(item, Entry)] == [Corrupt(bad, bad + len(frames[30]))]


def spool(directory: Path, max_bytes: int = 1 << 30) -> tuple[Spool, SpoolMetrics]:
    metrics = SpoolMetrics(CollectorRegistry())
    opened = Spool(str(directory), max_bytes, metrics, segment_bytes=4096)
    opened.open()
    return opened, metrics


def counter(metrics: SpoolMetrics, name: str, **labels: str) -> float:
    value = metrics.corrupt.labels(**labels) if name == "corrupt" else getattr(metrics, name)
    return float(value._value.get())


async def _forward_all(opened: Spool) -> list[Entry]:
    forwarded: list[Entry] = []
    while (batch := await opened.read(2000)) is not None:
        segment, items = batch
        first = items[0][2]
        if isinstance(first, (Corrupt, Torn)):
            opened.quarantine(segment, first, "checksum")
            continue
        forwarded += [item for _, _, item in items if isinstance(item, Entry)]
        opened.confirmed(segment, items[-1][1], len(items))
    return forwarded


def test_appends_are_durable_across_a_reopen_and_forwarded_in_order(tmp_path: Path) -> None:
    async def write() -> None:
        opened, metrics = spool(tmp_path)
        for first in range(0, 40, 5):  # concurrent appends share a sync (group commit)
            await asyncio.gather(*(opened.append([entry(n)]) for n in range(first, first + 5)))
        assert metrics.append_latency._sum.get() > 0
        assert opened.held == 40 and counter(metrics, "appended") == 40
        assert len(list(tmp_path.glob("*.seg"))) > 1  # rolled past segment_bytes
        opened.close()  # as a crash would leave it: nothing forwarded

    asyncio.run(write())

    async def forward() -> list[Entry]:
        opened, metrics = spool(tmp_path)
        assert opened.held == 40 and opened.holding
        forwarded = await _forward_all(opened)
        assert not opened.holding and counter(metrics, "forwarded") == 40
        return forwarded

    assert asyncio.run(forward()) == [entry(n) for n in range(40)]
    assert list(tmp_path.glob("*.seg")) == []


def test_a_torn_tail_is_cut_at_open_and_a_corrupt_record_quarantined_when_reached(tmp_path: Path) -> None:
    async def write() -> None:
        opened, _ = spool(tmp_path)
        for n in range(6):
            await opened.append([entry(n)])
        opened.close()

    asyncio.run(write())
    (segment,) = sorted(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    one = len(frame(encode_entry(entry(0))))
    data[one * 2 + HEADER.size + 5] ^= 0x10  # record 2 corrupt
    segment.write_bytes(bytes(data[:one * 5 + 9]))  # record 5 torn

    async def forward() -> tuple[list[Entry], SpoolMetrics]:
        opened, metrics = spool(tmp_path)
        assert counter(metrics, "corrupt", kind="torn") == 1
        assert segment.stat().st_size == one * 5
        return await _forward_all(opened), metrics

    forwarded, metrics = asyncio.run(forward())
    assert forwarded == [entry(n) for n in (0, 1, 3, 4)]
    assert counter(metrics, "corrupt", kind="checksum") == 1
    assert {p.name for p in (tmp_path / "quarantine").iterdir()} == {
        f"{segment.name}.{one * 2}.bad", f"{segment.name}.{one * 5}.bad"}


def test_a_full_spool_refuses_and_accepts_again_once_forwarded(tmp_path: Path) -> None:
    async def run() -> None:
        opened, metrics = spool(tmp_path, max_bytes=64 * 1024)
        size = len(frame(encode_entry(entry(0))))
        appended = 0
        with pytest.raises(SpoolFull):
            while appended <= 64 * 1024 // size:
                await opened.append([entry(appended)])
                appended += 1
        assert 64 * 1024 // (size + 60) < appended and opened.held == appended
        assert metrics.refusals.labels("full")._value.get() == 1
        await _forward_all(opened)
        await opened.append([entry(appended)])
        assert opened.held == 1

    asyncio.run(run())


def test_a_spool_directory_in_use_or_not_writable_is_one_line(tmp_path: Path) -> None:
    first, _ = spool(tmp_path / "a")
    with pytest.raises(SpoolDirError, match=r"^PASSPOST_SPOOL_DIR: .* in use by another passpost process$"):
        spool(tmp_path / "a")
    first.close()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(SpoolDirError, match=r"^PASSPOST_SPOOL_DIR: cannot use .*file/spool"):
        spool(blocked / "spool")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SpoolDirError, match="^PASSPOST_SPOOL_DIR: "):
            spool(locked / "spool")


def test_a_stale_cursor_never_hides_later_segments(tmp_path: Path) -> None:
    """A crash after the last segment was freed but before the cursor file went: the next
    segments must be numbered past it, or the start after would drop them as forwarded."""
    async def run() -> None:
        opened, _ = spool(tmp_path)
        await opened.append([entry(1)])
        opened.close()
        (tmp_path / "cursor").write_text("7 0\n")
        for segment in tmp_path.glob("*.seg"):
            segment.unlink()
        reopened, _ = spool(tmp_path)
        await reopened.append([entry(2)])
        reopened.close()
        again, _ = spool(tmp_path)
        assert await _forward_all(again) == [entry(2)]

    asyncio.run(run())
