"""The backup file format (documented byte by byte in docs/backups.md): a preamble, a JSON header holding the
manifest, the header's SHA-256 and (when encrypted) its AES-GCM tag, then framed chunks up to a final one.

``BodyWriter`` streams sections of record lines into sealed chunks through a worker thread (hash, compress,
seal, write), so reading the source and compressing overlap and memory stays flat. ``assemble`` puts the
header in front of the body once the manifest (counts, checksums) is known. ``BackupReader`` checks everything
on the way back: the header checksum and tag, every chunk's tag (index and final flag in its associated data),
that nothing follows the final chunk, and the manifest's counts and SHA-256 per section.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import BackupError, BackupTamperedError, ConfigError, NotABackupError
from .crypto import ChunkSealer, chunk_aad, unwrap_key

try:
    import zstandard
except ImportError:  # pragma: no cover - exercised only without the [backup] extra
    zstandard = None  # type: ignore[assignment]

MAGIC = b"HSBACKUP"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct(">8sHI")  # magic, format version, header length
FRAME = struct.Struct(">IB")  # payload length, flags
FLAG_FINAL = 0x01
HEADER_SHA_BYTES = 32
HEADER_TAG_BYTES = 28  # 12-byte nonce + 16-byte GCM tag
MAX_HEADER_BYTES = 16 << 20
MAX_CHUNK_BYTES = 256 << 20
CHUNK_TARGET = 1 << 20
END_SECTION = ("end", "")


def require_zstd() -> None:
    if zstandard is None:
        raise ConfigError("compressed backups need the zstandard package: pip install 'hybridstore[backup]'")


def section_line(section: tuple[str, str]) -> bytes:
    kind, name = section
    if section == END_SECTION:
        return b'{"end":true}\n'
    return json.dumps({kind: name}, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def parse_section(line: bytes) -> tuple[str, str]:
    try:
        obj = json.loads(line)
    except ValueError:
        raise BackupTamperedError("a chunk does not start with a section line") from None
    if obj == {"end": True}:
        return END_SECTION
    if isinstance(obj, dict) and len(obj) == 1:
        ((kind, name),) = obj.items()
        if kind in ("collection", "pending") and isinstance(name, str):
            return kind, name
    raise BackupTamperedError("a chunk starts with an unknown section line")


@dataclass
class SectionStats:
    count: int = 0
    sha: Any = field(default_factory=hashlib.sha256)

    def update(self, body: bytes) -> None:
        self.sha.update(body)
        self.count += body.count(b"\n")

    def entry(self, unit: str) -> dict[str, Any]:
        return {unit: self.count, "sha256": self.sha.hexdigest()}


@dataclass
class BodyStats:
    sections: dict[tuple[str, str], SectionStats]
    content_bytes: int
    chunks: int
    body_sha256: bytes = b""  # of the frames as written (see `check_written`)
    body_bytes: int = 0

    def manifest(self) -> dict[str, Any]:
        collections = {n: s.entry("records") for (k, n), s in self.sections.items() if k == "collection"}
        pending = {n: s.entry("ops") for (k, n), s in self.sections.items() if k == "pending"}
        return {
            "collections": collections,
            "pending": pending,
            "records": sum(c["records"] for c in collections.values()),
            "pending_ops": sum(p["ops"] for p in pending.values()),
            "content_bytes": self.content_bytes,
            "chunks": self.chunks,
        }


class BodyWriter:
    """Writes the chunk frames of one backup to ``out``. Call `add` with whole lines (each ending in ``\\n``),
    section by section, then `finish`.

    A chunk's bytes are joined once, behind its section line, and handed on as they are: the workers compress
    that buffer and the writer hashes a view of its body (no copy per stage). A caller that knows how many
    lines it adds says so, which spares counting them.

    Chunks are compressed and sealed by ``threads`` workers at once (zstd, SHA-256 and AES-GCM let go of the
    GIL), while one writer thread takes their results in chunk order, hashes each section and writes the frames.
    At most ``2 * threads + 2`` chunks are in flight, so memory stays flat whatever the backup's size.

    Each compressed chunk is decompressed again by its worker and compared with what it holds (a round trip
    that costs a fraction of the compression, spread over the workers), and the writer keeps a SHA-256 of every
    byte it writes: `check_written` then proves the file on disk is exactly what was produced, without the full
    decrypt-and-decompress pass that `BackupReader` makes (and without deriving the key from the passphrase)."""

    def __init__(
        self,
        out: IO[bytes],
        *,
        backup_id: bytes,
        sealer: ChunkSealer,
        zstd_level: int | None,
        chunk_target: int = CHUNK_TARGET,
        on_chunk: Callable[[int], None] | None = None,
        threads: int | None = None,
    ) -> None:
        if zstd_level is not None:
            require_zstd()
        self._out = out
        self._id = backup_id
        self._sealer = sealer
        self._level = zstd_level
        self._target = chunk_target
        self._on_chunk = on_chunk
        self._section: tuple[str, str] | None = None
        self._head = b""  # the current section's line, in front of each of its chunks
        self._parts: list[bytes] = []
        self._size = 0
        self._stats: dict[tuple[str, str], SectionStats] = {}
        self._content = 0
        self._index = 0
        self._written = 0
        self._body_sha = hashlib.sha256()
        self._body_bytes = 0
        self._error: BaseException | None = None
        workers = threads if threads is not None else default_threads()
        self._local = threading.local()  # one zstd context per worker thread
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hybridstore-backup-compress")
        self._queue: queue.Queue[tuple[tuple[str, str], memoryview, Future[bytes]] | None] = queue.Queue(
            maxsize=2 * workers + 2
        )
        self._thread = threading.Thread(target=self._work, name="hybridstore-backup-writer", daemon=True)
        self._thread.start()

    def add(self, section: tuple[str, str], lines: bytes, count: int | None = None) -> None:
        """Add whole ``lines`` to ``section``; ``count``: how many there are (counted here if not given)."""
        if not lines:
            return
        if section != self._section:
            self._flush()
            if section in self._stats:
                raise BackupError(f"section {section} written twice")
            self._section = section
            self._head = section_line(section)
            self._stats[section] = SectionStats()
        self._stats[section].count += lines.count(b"\n") if count is None else count
        start = 0
        while len(lines) - start + self._size > self._target:
            # split at a line end so that chunks stay near the target size whatever the caller's batches
            cut = lines.rfind(b"\n", start, start + self._target - self._size) + 1
            if cut <= start:
                if self._parts:
                    self._flush()
                    continue
                cut = lines.find(b"\n", start) + 1  # one line longer than the target: a chunk of its own
            self._parts.append(lines[start:cut])
            self._size += cut - start
            self._flush()
            start = cut
        if start < len(lines):
            rest = lines[start:] if start else lines
            self._parts.append(rest)
            self._size += len(rest)

    def _flush(self) -> None:
        if self._section is not None and self._parts:
            plain = b"".join([self._head, *self._parts])
            self._parts, self._size = [], 0
            self._submit(self._section, plain, len(self._head))

    def _submit(self, section: tuple[str, str], plain: bytes, body_start: int) -> None:
        """Seal ``plain`` (section line, then body from ``body_start``) in a worker; the writer takes it next."""
        if self._error is not None:
            raise self._error
        index = self._index
        self._index += 1
        future = self._pool.submit(self._seal, section, plain, index)
        self._put((section, memoryview(plain)[body_start:], future))

    def _seal(self, section: tuple[str, str], plain: bytes, index: int) -> bytes:
        if self._level is not None:
            cctx = getattr(self._local, "cctx", None)
            if cctx is None:
                cctx = self._local.cctx = zstandard.ZstdCompressor(level=self._level, write_checksum=True)
            payload = cctx.compress(plain)
            dctx = getattr(self._local, "dctx", None)
            if dctx is None:
                dctx = self._local.dctx = zstandard.ZstdDecompressor()
            if dctx.decompress(payload) != plain:
                raise BackupError(f"chunk {index} does not decompress to what was compressed (nothing published)")
        else:
            payload = plain
        flags = FLAG_FINAL if section == END_SECTION else 0
        return self._sealer.seal(payload, chunk_aad(self._id, index, flags), index)

    def _put(self, item: tuple[tuple[str, str], memoryview, Future[bytes]] | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                section, body, future = item
                final = section == END_SECTION
                if not final:
                    self._stats[section].sha.update(body)  # counted in `add`
                sealed = future.result()
                self._content += len(body)
                frame = FRAME.pack(len(sealed), FLAG_FINAL if final else 0)
                self._out.write(frame)
                self._out.write(sealed)
                self._body_sha.update(frame)
                self._body_sha.update(sealed)
                self._body_bytes += len(frame) + len(sealed)
                self._written += 1
                if self._on_chunk is not None:
                    self._on_chunk(len(body))
        except BaseException as exc:
            self._error = exc
            # keep draining so the producer never blocks on a full queue
            while self._queue.get() is not None:
                pass

    def finish(self) -> BodyStats:
        """Flush, write the final chunk, wait for the workers; raises what a worker hit."""
        try:
            self._flush()
            end = section_line(END_SECTION)
            self._submit(END_SECTION, end, len(end))
            self._put(None)
            self._thread.join()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._error is not None:
            raise self._error
        self._out.flush()
        return BodyStats(self._stats, self._content, self._written, self._body_sha.digest(), self._body_bytes)

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or BackupError("aborted")
            try:
                self._queue.put(None, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)


def default_threads() -> int:
    """Compression workers: two where there are two cores or more (the writer and SQLite need the rest)."""
    return max(1, min(2, (os.cpu_count() or 1)))


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def assemble(path: Path, header: dict[str, Any], sealer: ChunkSealer, body_path: Path) -> int:
    """Write ``header`` then the body file's bytes to ``path`` and fsync it; returns the file size."""
    raw = encode_header(header)
    pre = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw
    head = pre + hashlib.sha256(pre).digest()
    if sealer.encrypted:
        head += sealer.header_tag(pre)
    with open(path, "wb") as out, open(body_path, "rb") as body:
        out.write(head)
        out.flush()
        size = os.fstat(body.fileno()).st_size
        copied = 0
        copy_range = getattr(os, "copy_file_range", None)  # Linux: the kernel copies, no bytes through Python
        try:
            while copy_range is not None and copied < size:
                n = copy_range(body.fileno(), out.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            copied = 0
        if copied < size:
            out.seek(len(head))
            out.truncate()
            body.seek(0)
            shutil.copyfileobj(body, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    return len(head) + size


def check_written(path: Path, header: dict[str, Any], stats: BodyStats) -> None:
    """Read a freshly assembled backup back from disk: its header must be ``header`` (checksum checked) and its
    body exactly the bytes `BodyWriter` wrote (length and SHA-256). `BackupError` otherwise."""
    try:
        with open(path, "rb") as f:
            found, offset = _read_header(f, path)
            f.seek(offset)
            if found != json.loads(encode_header(header)):
                raise BackupError(f"{path.name}: the header read back differs from the one written")
            sha = hashlib.sha256()
            size = 0
            while block := f.read(1 << 20):
                sha.update(block)
                size += len(block)
    except OSError as exc:
        raise BackupError(f"cannot read back {path}: {exc}") from exc
    if size != stats.body_bytes or sha.digest() != stats.body_sha256:
        raise BackupError(f"{path.name}: the body read back differs from the bytes written (disk or file system)")


def rewrite_header(src: Path, dst: Path, header: dict[str, Any], sealer: ChunkSealer) -> int:
    """Copy ``src`` to ``dst`` with a new header (same body): how a passphrase rotation re-wraps a data key."""
    with open(src, "rb") as f:
        _, body_offset = _read_header(f, src)
        tmp_body = dst.with_name(dst.name + ".body")
        with open(tmp_body, "wb") as out:
            f.seek(body_offset)
            shutil.copyfileobj(f, out, 1 << 20)
    try:
        return assemble(dst, header, sealer, tmp_body)
    finally:
        tmp_body.unlink(missing_ok=True)


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BackupTamperedError(f"backup file is truncated ({what})")
    return data


def _read_header(f: IO[bytes], path: Path) -> tuple[dict[str, Any], int]:
    """(header, offset of the body). Checks magic and the header's SHA-256, not its tag."""
    pre = f.read(PREAMBLE.size)
    if len(pre) < len(MAGIC) or pre[: len(MAGIC)] != MAGIC:
        # A cut or one or two damaged bytes of our magic are a damaged backup; anything else is not a backup.
        if pre and MAGIC.startswith(pre):
            raise BackupTamperedError(f"{path.name}: backup file is truncated (magic)")
        if len(pre) >= len(MAGIC) and sum(a != b for a, b in zip(pre, MAGIC, strict=False)) <= 2:
            raise BackupTamperedError(f"{path.name}: the backup's magic bytes are damaged")
        raise NotABackupError(f"{path.name} is not a hybridstore backup (no HSBACKUP signature)")
    if len(pre) < PREAMBLE.size:
        raise BackupTamperedError(f"{path.name}: backup file is truncated (preamble)")
    _, version, length = PREAMBLE.unpack(pre)
    if length > MAX_HEADER_BYTES:
        raise BackupTamperedError(f"{path.name}: implausible header length {length}")
    raw = _read_exact(f, length, "header")
    digest = _read_exact(f, HEADER_SHA_BYTES, "header checksum")
    if hashlib.sha256(pre + raw).digest() != digest:
        raise BackupTamperedError(f"{path.name}: the backup header failed its checksum (changed or damaged)")
    if version != FORMAT_VERSION:
        raise BackupError(f"{path.name}: backup format version {version} is not supported (this build reads 1)")
    try:
        header = json.loads(raw)
    except ValueError:
        raise BackupTamperedError(f"{path.name}: the backup header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("manifest"), dict):
        raise BackupTamperedError(f"{path.name}: the backup header has no manifest")
    offset = PREAMBLE.size + length + HEADER_SHA_BYTES
    if _cipher_name(header) != "none":
        offset += HEADER_TAG_BYTES
    return header, offset


def _cipher_name(header: dict[str, Any]) -> str:
    cipher = header.get("cipher")
    name = cipher.get("name") if isinstance(cipher, dict) else None
    if name not in ("none", "aes-256-gcm"):
        raise BackupTamperedError("backup header names an unknown cipher")
    return str(name)


def read_header(path: Path) -> dict[str, Any]:
    """The header of a backup file (checksum-checked; no passphrase needed)."""
    try:
        with open(path, "rb") as f:
            return _read_header(f, path)[0]
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc


def backup_id_bytes(header: dict[str, Any]) -> bytes:
    try:
        return bytes.fromhex(str(header["backup_id"]))
    except (KeyError, ValueError):
        raise BackupTamperedError("backup header has no valid backup id") from None


@dataclass
class Chunk:
    index: int
    section: tuple[str, str]
    body: bytes
    stored: int


class BackupReader:
    """Opens a backup for reading: header checks at once (checksum; with the passphrase, key and header tag),
    chunk checks as `chunks()` streams them. Use as a context manager."""

    def __init__(self, path: Path, passphrase: str | None) -> None:
        self.path = path
        self._digest = b""
        try:
            self._f: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc}") from exc
        try:
            self.header, self._body_offset = _read_header(self._f, path)
            self.manifest: dict[str, Any] = self.header["manifest"]
            self._id = backup_id_bytes(self.header)
            cipher = self.header["cipher"]
            if _cipher_name(self.header) == "none":
                self._sealer = ChunkSealer(None)
            else:
                self._sealer = ChunkSealer(unwrap_key(cipher, passphrase, self._id))
                self._f.seek(self._body_offset - HEADER_TAG_BYTES)
                tag = _read_exact(self._f, HEADER_TAG_BYTES, "header tag")
                self._f.seek(0)
                pre = self._f.read(self._body_offset - HEADER_SHA_BYTES - HEADER_TAG_BYTES)
                self._sealer.check_header(pre, tag)
            compression = self.header.get("compression")
            self._zstd = isinstance(compression, dict) and compression.get("name") == "zstd"
            if self._zstd:
                require_zstd()
            elif compression != {"name": "none"}:
                raise BackupTamperedError("backup header names an unknown compression")
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def body_bytes(self) -> int:
        return os.fstat(self._f.fileno()).st_size - self._body_offset

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in order, authenticated and decompressed; ends after the final chunk, which must be the
        last bytes of the file. Raises `BackupTamperedError` on any damage."""
        f = self._f
        f.seek(self._body_offset)
        dctx = zstandard.ZstdDecompressor() if self._zstd else None
        index = 0
        while True:
            frame = f.read(FRAME.size)
            if len(frame) < FRAME.size:
                raise BackupTamperedError(f"backup is truncated: chunk {index} is missing (no final chunk)")
            length, flags = FRAME.unpack(frame)
            if flags & ~FLAG_FINAL or length > MAX_CHUNK_BYTES:
                raise BackupTamperedError(f"chunk {index} has a damaged frame")
            sealed = _read_exact(f, length, f"chunk {index}")
            payload = self._sealer.open(sealed, chunk_aad(self._id, index, flags), index)
            if dctx is not None:
                try:
                    size = zstandard.frame_content_size(payload)
                    if size < 0 or size > MAX_CHUNK_BYTES:
                        raise BackupTamperedError(f"chunk {index} declares an implausible size")
                    plain = dctx.decompress(payload)
                except zstandard.ZstdError as exc:
                    raise BackupTamperedError(f"chunk {index} does not decompress: {exc}") from None
            else:
                plain = payload
            nl = plain.find(b"\n")
            if nl < 0:
                raise BackupTamperedError(f"chunk {index} has no section line")
            section = parse_section(plain[: nl + 1])
            final = bool(flags & FLAG_FINAL)
            if final != (section == END_SECTION):
                raise BackupTamperedError(f"chunk {index}: final flag and end section disagree")
            yield Chunk(index, section, plain[nl + 1 :], FRAME.size + length)
            index += 1
            if final:
                if f.read(1):
                    raise BackupTamperedError("backup has extra bytes after its final chunk")
                if index != self.manifest.get("chunks"):
                    raise BackupTamperedError("backup has a different number of chunks than its manifest says")
                return

    def sections(self, progress: Callable[[int], None] | None = None) -> Iterator[tuple[tuple[str, str], bytes]]:
        """(section, body) of every chunk but the final one, checking the manifest as it goes: sections in the
        manifest's order, each contiguous, counts and SHA-256 equal to the manifest's (checked at the end of
        each section, so a consumer sees a damaged section's data before the error: validate first)."""
        expected = [("collection", n) for n in self.manifest.get("collections", {})] + [
            ("pending", n) for n in self.manifest.get("pending", {})
        ]
        pos = -1
        current: tuple[str, str] | None = None
        stats = SectionStats()
        for chunk in self.chunks():
            if progress is not None:
                progress(chunk.stored)
            if chunk.section != current:
                if current is not None:
                    self._check_section(current, stats)
                if chunk.section == END_SECTION:
                    current = None
                    continue  # chunks() still checks that nothing follows the final chunk
                pos += 1
                if pos >= len(expected) or expected[pos] != chunk.section:
                    raise BackupTamperedError(f"unexpected section {chunk.section} in chunk {chunk.index}")
                current, stats = chunk.section, SectionStats()
            stats.update(chunk.body)
            self._digest = stats.sha.copy().digest()
            yield chunk.section, chunk.body
        if pos != len(expected) - 1:
            raise BackupTamperedError("backup is missing sections its manifest lists")

    @property
    def digest(self) -> bytes:
        """SHA-256 of the bytes of the current section up to the chunk `sections` yielded last: the same on a
        second read of the same file only if none of them changed (a restore's apply pass checks it)."""
        return self._digest

    def _check_section(self, section: tuple[str, str], stats: SectionStats) -> None:
        kind, name = section
        entry = self.manifest["collections" if kind == "collection" else "pending"][name]
        unit = "records" if kind == "collection" else "ops"
        if entry.get(unit) != stats.count or entry.get("sha256") != stats.sha.hexdigest():
            raise BackupTamperedError(f"{kind} {name!r}: content differs from the manifest's count or SHA-256")
