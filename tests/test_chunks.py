"""The checkpoint store's chunks: large tensors of the training state stored once, by content."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import zstandard

from finsense.checkpoint import CheckpointManager, read_json
from finsense.checkpoint import chunks as chunks_module
from finsense.checkpoint.chunks import CHUNK_BYTES, Chunked
from finsense.checkpoint.layout import CHUNKS_DIR, is_chunk_name
from finsense.errors import CheckpointError

WIDTH = 32  # 128 bytes a row: 2,048 rows a chunk
ROWS = 20_480  # 10 chunks
PER_STAMP = 256


class Ring:
    """A ring of rows with a stamp per block of rows, as the replay buffer keeps them."""

    def __init__(self, rows: int = ROWS) -> None:
        self.rows = torch.zeros(rows, WIDTH)
        self.stamps = [0] * -(-rows // PER_STAMP)
        self.clock = 0
        self.pos = 0
        self.gen = torch.Generator().manual_seed(0)

    def write(self, n: int) -> None:
        for _ in range(n):
            self.clock += 1
            self.rows[self.pos] = torch.randn(WIDTH, generator=self.gen)
            self.stamps[self.pos // PER_STAMP] = self.clock
            self.pos = (self.pos + 1) % len(self.rows)

    def state(self, *, stamped: bool = True) -> dict[str, Any]:
        stamps = list(self.stamps) if stamped else None
        return {"ring": Chunked(self.rows, stamps, PER_STAMP), "clock": self.clock}


def save(
    manager: CheckpointManager, episode: int, ring: Ring, *, value: float | None = None, **kw: Any
) -> Any:
    metrics = {"total_profit": float(episode if value is None else value)}
    return manager.save(
        episode,
        {"policy": {"w": torch.full((3,), float(episode))}},
        {"metrics": metrics},
        training_state=ring.state(**kw),
    )


def stored(models: Path) -> set[str]:
    return {n for n in os.listdir(models / CHUNKS_DIR) if is_chunk_name(n)}


def hashed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the raw size of every chunk the store compresses and hashes."""
    sizes: list[int] = []
    real = chunks_module._pack

    def counting(piece: memoryview) -> tuple[bytes, str]:
        sizes.append(piece.nbytes)
        return real(piece)

    monkeypatch.setattr(chunks_module, "_pack", counting)
    return sizes


def test_a_chunked_tensor_is_stored_as_chunks_named_by_their_sha256(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    ring = Ring()
    ring.write(ROWS)
    info = save(CheckpointManager(models), 1, ring)

    manifest = info.metadata["chunked"]
    assert [e["key"] for e in manifest] == ["ring"]
    entry = manifest[0]
    assert entry["dtype"] == "float32" and entry["shape"] == [ROWS, WIDTH]
    assert entry["rows_per_chunk"] == CHUNK_BYTES // (WIDTH * 4) and entry["codec"] == "zstd"
    raw = ring.rows.numpy().tobytes()
    size = entry["rows_per_chunk"] * WIDTH * 4
    for i, (digest, nbytes, stamp, stored) in enumerate(entry["chunks"]):
        piece = raw[i * size : (i + 1) * size]
        data = (models / CHUNKS_DIR / digest).read_bytes()
        assert digest == hashlib.sha256(data).hexdigest() and nbytes == len(piece)
        if stored is None:  # random floats do not compress: stored raw
            assert data == piece
        else:  # the zeros the ring starts with
            assert stored == len(data) and zstandard.ZstdDecompressor().decompress(data) == piece
        assert stamp == max(ring.stamps[i * size // (PER_STAMP * WIDTH * 4) :][:8])
    assert read_json(models / "model_ep1.json")["chunked"] == manifest
    # The companion holds a placeholder only; the model file loads with torch.load alone.
    assert (models / "model_ep1.train.pt").stat().st_size < 4096
    policy = torch.load(models / "model_ep1.pt", weights_only=True)
    assert torch.equal(policy["policy"]["w"], torch.full((3,), 1.0))

    _, training, _ = CheckpointManager(models).load(models / "model_ep1.pt")
    assert training is not None and torch.equal(training["ring"], ring.rows)
    assert training["clock"] == ROWS


def test_a_save_hashes_and_writes_only_the_chunks_whose_rows_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    ring.write(ROWS)
    save(manager, 1, ring)
    before = stored(models)
    assert len(before) == 10

    sizes = hashed_bytes(monkeypatch)
    ring.pos = 3_000
    ring.write(500)  # rows 3,000-3,499: all in the second chunk (rows 2,048-4,095)
    info = save(manager, 2, ring)
    assert sizes == [CHUNK_BYTES]
    assert len(stored(models) - before) == 1
    _, training, _ = CheckpointManager(models).load(info)
    assert training is not None and torch.equal(training["ring"], ring.rows)


def test_without_stamps_every_chunk_is_hashed_but_only_new_content_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    ring.write(ROWS)
    save(manager, 1, ring, stamped=False)
    sizes = hashed_bytes(monkeypatch)
    ring.write(100)
    save(manager, 2, ring, stamped=False)
    assert len(sizes) == 10
    assert len(stored(models)) == 11


def test_windowed_rows_are_stored_compressed(tmp_path: Path) -> None:
    """Rows that are sliding windows of one series (a trading env's observations) repeat most
    of their values: the chunks on disk are a fraction of the tensor."""
    models = tmp_path / "run" / "models"
    series = torch.randn(ROWS + WIDTH, generator=torch.Generator().manual_seed(1))
    windows = series.unfold(0, WIDTH, 1)[:ROWS].contiguous()
    state = {"windows": Chunked(windows)}
    CheckpointManager(models).save(1, {}, {"metrics": {"total_profit": 0.0}}, training_state=state)
    on_disk = sum(p.stat().st_size for p in (models / CHUNKS_DIR).iterdir())
    assert on_disk < windows.nbytes / 4
    rows = read_json(models / "model_ep1.json")["chunked"][0]["chunks"]
    assert all(row[3] is not None for row in rows)  # every chunk compressed
    _, training, _ = CheckpointManager(models).load(models / "model_ep1.pt")
    assert training is not None and torch.equal(training["windows"], windows)


def test_identical_chunks_are_stored_once(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    info = save(CheckpointManager(models), 1, Ring())  # all zeros
    assert len({row[0] for row in info.metadata["chunked"][0]["chunks"]}) == 1
    assert len(stored(models)) == 1


def test_the_stamps_of_a_loaded_checkpoint_spare_the_next_save_a_full_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run's first save hashes only what changed since the checkpoint it loaded."""
    models = tmp_path / "run" / "models"
    ring = Ring()
    ring.write(ROWS)
    save(CheckpointManager(models), 1, ring)

    resumed = CheckpointManager(models)
    info = resumed.latest()
    assert info is not None
    resumed.load(info)
    sizes = hashed_bytes(monkeypatch)
    ring.write(10)
    save(resumed, 2, ring)
    assert sizes == [CHUNK_BYTES]


def test_unreferenced_chunks_are_collected_after_rotation_but_the_bests_are_kept(
    tmp_path: Path,
) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models, max_keep=2)
    ring = Ring()
    ring.write(ROWS)
    best = save(manager, 1, ring, value=100.0)
    best_chunks = {row[0] for row in best.metadata["chunked"][0]["chunks"]}
    for episode in range(2, 8):
        ring.write(3_000)
        save(manager, episode, ring, value=0.0)
    assert manager.all_episodes() == [6, 7]
    listed: set[str] = set()
    for name in ("model_ep6.json", "model_ep7.json", "best_model.json"):
        listed |= {row[0] for row in read_json(models / name)["chunked"][0]["chunks"]}
    assert stored(models) == listed
    assert best_chunks <= stored(models)
    _, training, _ = manager.load(models / "best_model.pt")
    assert training is not None and training["clock"] == ROWS


def test_leftovers_of_a_save_cut_short_are_collected_by_the_next_save(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    ring.write(ROWS)
    save(manager, 1, ring)
    orphan = models / CHUNKS_DIR / ("ab" * 32)
    orphan.write_bytes(b"from a save killed before its JSON")
    unfinished = models / CHUNKS_DIR / f".{'cd' * 32}.tmp-1-1"
    unfinished.write_bytes(b"half")
    ring.write(10)
    save(manager, 2, ring)
    assert not orphan.exists() and not unfinished.exists()


@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "threads"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_damaged_chunk_sets_its_checkpoint_aside_and_the_previous_one_is_used(
    tmp_path: Path,
    damage: str,
    threads: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if threads:  # the threaded read of a big load, forced for this small one
        monkeypatch.setattr(chunks_module, "_PARALLEL_BYTES", 0)
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    ring.write(ROWS)
    save(manager, 1, ring)
    ring.pos = 0
    ring.write(10)  # only the first chunk differs
    newest = save(manager, 2, ring)
    digest = newest.metadata["chunked"][0]["chunks"][0][0]
    chunk = models / CHUNKS_DIR / digest
    if damage == "flip":
        data = bytearray(chunk.read_bytes())
        data[100] ^= 0xFF
        chunk.write_bytes(bytes(data))
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:1000])
    else:
        chunk.unlink()

    caplog.set_level(logging.WARNING)
    fresh = CheckpointManager(models)
    info = fresh.latest()
    assert info is not None and info.episode == 1
    reason = {"flip": "chunk checksum mismatch", "truncate": "truncated chunk", "remove": "missing"}
    assert f"{chunk}: {reason[damage]}" in caplog.text and "set aside" in caplog.text
    assert (models / "model_ep2.json.corrupt").exists()
    assert (chunk.with_name(digest + ".corrupt").exists()) == (damage != "remove")
    _, training, _ = fresh.load(info)
    assert training is not None and training["clock"] == ROWS

    # The next save stores that content again rather than listing the damaged chunk.
    ring.write(5)
    again = save(fresh, 3, ring)
    _, training, _ = CheckpointManager(models).load(again)
    assert training is not None and torch.equal(training["ring"], ring.rows)


def test_archive_after_an_episode_keeps_the_chunks_of_what_it_moves(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    states = {}
    for episode in (1, 2, 3):
        ring.write(5_000)
        save(manager, episode, ring, value=0.0)
        states[episode] = ring.rows.clone()
    target = manager.archive(after=1)
    assert target is not None
    ring.write(100)
    save(manager, 2, ring, value=0.0)  # the new future: collects what only the archive lists
    for episode in (2, 3):
        _, training, _ = manager.load(target / f"model_ep{episode}.pt")
        assert training is not None and torch.equal(training["ring"], states[episode])
    _, training, _ = manager.load(models / "model_ep1.pt")
    assert training is not None and torch.equal(training["ring"], states[1])


def test_a_fresh_start_archives_the_whole_chunk_store(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    ring.write(ROWS)
    save(manager, 1, ring)
    target = manager.archive()
    assert target is not None and not (models / CHUNKS_DIR).exists()
    _, training, _ = manager.load(target / "model_ep1.pt")
    assert training is not None and torch.equal(training["ring"], ring.rows)


def test_a_chunked_tensor_in_the_model_file_is_refused(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "models")
    with pytest.raises(TypeError, match="only the training state"):
        manager.save(1, {"w": Chunked(torch.zeros(3))}, {"metrics": {"total_profit": 0.0}})
    assert not any((tmp_path / "models").iterdir())


def test_a_full_disk_while_writing_chunks_leaves_no_chunk_and_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "run" / "models"
    manager = CheckpointManager(models)
    ring = Ring()
    ring.write(ROWS)
    save(manager, 1, ring)
    before = stored(models)
    real = chunks_module._write_tmp
    calls = []

    def failing(path: Path, data: Any, **kw: Any) -> Any:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(chunks_module, "_write_tmp", failing)
    ring.pos = 0
    ring.write(ROWS)  # every chunk changes
    with pytest.raises(CheckpointError, match="No space left on device"):
        save(manager, 2, ring)
    assert stored(models) == before
    assert manager.all_episodes() == [1]
    assert not [n for n in os.listdir(models / CHUNKS_DIR) if n.startswith(".")]


def test_a_damaged_compressed_chunk_is_caught_by_its_checksum(tmp_path: Path) -> None:
    models = tmp_path / "run" / "models"
    info = save(CheckpointManager(models), 1, Ring())  # zeros: stored compressed
    digest, _, _, stored = info.metadata["chunked"][0]["chunks"][0]
    assert stored is not None
    chunk = models / CHUNKS_DIR / digest
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{digest}: chunk checksum mismatch"):
        CheckpointManager(models).load(models / "model_ep1.pt")


def write_chunk(directory: Path, data: bytes) -> str:
    """Store ``data`` as a chunk named by its SHA-256 (as a save would, right or wrong)."""
    digest = hashlib.sha256(data).hexdigest()
    (directory / CHUNKS_DIR).mkdir(exist_ok=True)
    (directory / CHUNKS_DIR / digest).write_bytes(data)
    return digest


def one_entry(rows: list[list[Any]], row_bytes: int = 128) -> list[dict[str, Any]]:
    """A manifest of one uint8 tensor of ``row_bytes``-byte rows, one row a chunk."""
    return [
        {
            "key": "t",
            "dtype": "uint8",
            "shape": [len(rows), row_bytes],
            "rows_per_chunk": 1,
            "codec": "zstd",
            "chunks": rows,
        }
    ]


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (zstandard.ZstdCompressor().compress(bytes(100)), "chunk holds 100 bytes, not the 128"),
        (zstandard.ZstdCompressor().compress(bytes(200)), "chunk holds 200 bytes, not the 128"),
        (
            zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100)),
            "chunk holds 100 bytes, not the 128",
        ),
        (
            zstandard.ZstdCompressor(write_content_size=False).compress(bytes(200)),
            "chunk holds more than the 128 bytes",
        ),
        (b"not a zstandard frame at all", "chunk does not decompress"),
        (
            zstandard.ZstdCompressor(write_checksum=True).compress(bytes(127) + b"\x01")[:-1]
            + b"\x00",
            "chunk does not decompress",
        ),
    ],
    ids=["short", "long", "short-unsized", "long-unsized", "garbage", "frame-checksum"],
)
def test_a_compressed_chunk_that_does_not_decompress_to_its_listed_size_fails(
    tmp_path: Path, stored: bytes, reason: str
) -> None:
    """Its digest matches (it was written wrong, not damaged since): still refused."""
    digest = write_chunk(tmp_path, stored)
    manifest = one_entry([[digest, 128, None, len(stored)]])
    with pytest.raises(chunks_module.ChunkError, match=reason) as caught:
        chunks_module.read_chunked(manifest, tmp_path)
    assert caught.value.path == tmp_path / CHUNKS_DIR / digest and caught.value.damaged


def test_a_raw_chunk_longer_than_listed_fails(tmp_path: Path) -> None:
    digest = write_chunk(tmp_path, bytes(129))
    with pytest.raises(chunks_module.ChunkError, match="chunk longer than the 128 bytes listed"):
        chunks_module.read_chunked(one_entry([[digest, 128, None, None]]), tmp_path)


def test_chunks_read_in_threads_are_bit_exact_and_the_first_bad_one_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threaded read (forced here for a small tensor) fills every row in place, raw and
    compressed chunks alike; with two damaged chunks it names the first in manifest order, as
    one thread would, and leaves no thread behind."""
    monkeypatch.setattr(chunks_module, "_PARALLEL_BYTES", 0)
    monkeypatch.setattr(chunks_module, "_workers", lambda: 3)
    gen = torch.Generator().manual_seed(3)
    tensor = torch.randint(0, 256, (64, 128), dtype=torch.uint8, generator=gen)
    tensor[::2] = 7  # every other row compresses
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    rows = []
    for i, row in enumerate(tensor):
        raw = row.numpy().tobytes()
        stored = cctx.compress(raw) if i % 2 == 0 else raw
        rows.append([write_chunk(tmp_path, stored), 128, None, len(stored) if i % 2 == 0 else None])
    assert len({row[0] for row in rows}) == 33  # the compressed rows are one chunk
    threads = threading.active_count()
    (loaded,) = chunks_module.read_chunked(one_entry(rows), tmp_path)
    assert torch.equal(loaded, tensor)

    for index in (9, 41):  # raw chunks: each stored once
        path = tmp_path / CHUNKS_DIR / rows[index][0]
        path.write_bytes(b"\xff" + path.read_bytes()[1:])
    for _ in range(5):
        with pytest.raises(chunks_module.ChunkError, match="chunk checksum mismatch") as caught:
            chunks_module.read_chunked(one_entry(rows), tmp_path)
        assert caught.value.path == tmp_path / CHUNKS_DIR / rows[9][0]
    (tmp_path / CHUNKS_DIR / rows[3][0]).unlink()
    with pytest.raises(chunks_module.ChunkError, match="missing chunk") as caught:
        chunks_module.read_chunked(one_entry(rows), tmp_path)
    assert caught.value.path == tmp_path / CHUNKS_DIR / rows[3][0]
    assert threading.active_count() == threads


def test_ctrl_c_during_a_threaded_read_is_raised_and_the_threads_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chunks_module, "_workers", lambda: 3)
    done: list[int] = []

    def read(index: int) -> None:
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        time.sleep(0.005)
        done.append(index)

    threads = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        chunks_module._each(read, list(range(200)), nbytes=1 << 40)
    assert len(done) < 199 and threading.active_count() == threads
