"""The local evidence index: corpus records in SQLite, ranked by FTS5 BM25.

One SQLite file holds the records (``documents``), an external-content FTS5
table over them, and the list of ingested files. Every blocking call runs in a
worker thread; readers use pooled connections and WAL, so searches keep going
while a build writes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import chain, count
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from deepresearch.search import vocabulary
from deepresearch.search.relevance import NEAR_BEST, Passage, Scorer
from deepresearch.search.results import SearchResult, derived_title, snippet
from deepresearch.search.text import STOPWORDS
from deepresearch.search.understanding import Understanding, understand
from deepresearch.search.vocabulary import Vocabulary

T = TypeVar("T")
Progress = Callable[[int], None] | None

_BUSY_TIMEOUT_S = 30.0
_BATCH_ROWS = 1000  # rows per executemany, and how often progress() is told
_COMMIT_ROWS = 5000  # rows per transaction: big enough for speed, small enough for readers
# bm25() weights for (title, text, mesh, question), tuned on the PubMedQA dev split.
_WEIGHTS = (4.0, 2.0, 4.0, 2.0)
_CORE_FIELDS = frozenset({"id", "source", "url", "title", "year", "text"})
# Raised when the same file would now yield different records (2: repeated ids are
# renamed, not overwritten); an index built by an older version re-ingests every file.
_INGEST_VERSION = 2

# External content: the FTS table stores only the index, so every change to
# `documents` must reach it; triggers do that for any writer.
_FTS_ADD = """INSERT INTO documents_fts (rowid, title, text, mesh, question)
    VALUES (new.n, new.title, new.text, new.mesh, new.question);"""
_FTS_DROP = """INSERT INTO documents_fts (documents_fts, rowid, title, text, mesh, question)
    VALUES ('delete', old.n, old.title, old.text, old.mesh, old.question);"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    -- An explicit integer key: FTS5 external content points at it, and VACUUM may
    -- renumber an implicit rowid. The record id is the unique lookup key.
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    title TEXT,
    year INTEGER,
    text TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{{}}',  -- JSON: mesh, question, pmid, ...
    origin TEXT NOT NULL DEFAULT '',  -- resolved path of the file it came from
    generation INTEGER NOT NULL DEFAULT 0,  -- that file's ingest generation
    mesh TEXT GENERATED ALWAYS AS (json_extract(extra, '$.mesh')) VIRTUAL,
    question TEXT GENERATED ALWAYS AS (json_extract(extra, '$.question')) VIRTUAL
);
CREATE INDEX IF NOT EXISTS documents_origin ON documents (origin, generation);
CREATE INDEX IF NOT EXISTS documents_title ON documents (title);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts USING fts5(
    title, text, mesh, question,
    content='documents', content_rowid='n',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS documents_ai AFTER INSERT ON documents BEGIN {_FTS_ADD} END;
CREATE TRIGGER IF NOT EXISTS documents_ad AFTER DELETE ON documents BEGIN {_FTS_DROP} END;
CREATE TRIGGER IF NOT EXISTS documents_au AFTER UPDATE ON documents
BEGIN {_FTS_DROP} {_FTS_ADD} END;
"""

_UPSERT = """
INSERT INTO documents (id, source, url, title, year, text, extra, origin, generation)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    source = excluded.source, url = excluded.url, title = excluded.title,
    year = excluded.year, text = excluded.text, extra = excluded.extra,
    origin = excluded.origin, generation = excluded.generation
"""

# BM25 gathers candidates from the FTS index alone; rows are then read for those
# and for the focus's own pages, and ranked by coverage (``relevance.py``).
_RANK = f"""
SELECT rowid FROM documents_fts WHERE documents_fts MATCH ?
ORDER BY bm25(documents_fts, {", ".join(map(str, _WEIGHTS))}) LIMIT ?
"""
_CANDIDATES = 60  # BM25 candidates per search
_PAGE_PASSAGES = 400  # passages read from the focus's own pages, at most
_ROW = "SELECT n, title, text, extra, id, url, year FROM documents"

_WORD = re.compile(r"[^\W_]+")  # letters and digits only: never a quote or FTS operator
_MAX_TERMS = 64  # a pasted essay should not become a thousand-way OR
_MAX_NAMES = 12  # other names of the focus added to a query

# id, source, url, title, year, text, extra, origin, generation
Row = tuple[str, str, str, str | None, int | None, str, str, str, int]


@dataclass(frozen=True)
class IndexStats:
    documents: int  # records in the index after the build
    added: int  # records ingested by this call (new or updated)
    skipped_files: int  # files unchanged since they were last ingested
    bad_records: int  # lines that were not JSON objects with a string id and text
    # Records whose id came earlier in the same file: renamed when their url or text
    # differ (MedQuAD reuses ids across its sources), collapsed when identical.
    duplicate_ids: int
    seconds: float
    size_bytes: int  # the SQLite file on disk


def fts_query(text: str) -> str:
    """Free text to an FTS5 query that cannot carry FTS syntax: quoted terms joined by OR."""
    # Fold as the index's tokenizer does (remove_diacritics): compatibility forms and
    # accents would otherwise split words ("İstanbul" lost its first letter).
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    normal = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = (w for w in _WORD.findall(normal) if len(w) > 1 and w not in STOPWORDS)
    terms = list(dict.fromkeys(words))[:_MAX_TERMS]  # dict: dedupe, keep order
    return " OR ".join(f'"{t}"' for t in terms)


def understood_query(understanding: Understanding, vocabulary: Vocabulary) -> str:
    """The FTS query for an understood question: its words, and its focus's other names
    as phrases ("hypertension" also finds "high blood pressure")."""
    plain = fts_query(understanding.text)
    names = sorted(vocabulary.names_of(understanding.titles))[:_MAX_NAMES]
    phrases = [f'"{name}"' for name in names if name and '"' not in name]
    return " OR ".join(part for part in [plain, *phrases] if part)


class EvidenceIndex:
    """Corpus records in one SQLite file, searchable by BM25.

    ``max_readers`` bounds the pooled read connections and the searches running at
    once; more wait their turn without holding a worker thread.
    """

    def __init__(self, path: Path, *, max_readers: int = 4) -> None:
        self.path = path
        self._max_readers = max_readers  # pooled connections, and searches running at once
        self._lock = threading.Lock()  # guards the schema flag and the pool
        self._build_lock = threading.Lock()  # one writer at a time; readers never wait on it
        self._ready = False
        self._idle: list[sqlite3.Connection] = []
        # Further readers wait here, not in worker threads: forty threads fighting for the
        # GIL stalled the event loop for 100 ms and slowed a running build twentyfold.
        self._readers = anyio.CapacityLimiter(max_readers)
        self._vocabulary: Vocabulary | None = None  # read by the first search after a build

    async def build(self, paths: Sequence[Path], progress: Progress = None) -> IndexStats:
        """Ingest JSONL / JSONL.gz files (a folder means its ``*.jsonl[.gz]``), skipping
        files unchanged since the last build.

        A changed file is re-ingested: records upsert by id, and records that are
        no longer in it are deleted; a file repeating an id keeps every distinct
        record under an id of its own (``_DistinctIds``). Records of files not
        passed to this call are kept, so a partial build never drops another corpus.
        A file that cannot be read (missing, truncated gzip) fails the build after
        the files before it are committed; it stays unrecorded, so the next build
        retries it.
        """
        return await anyio.to_thread.run_sync(self._build, paths, progress)

    async def search(self, query: str, limit: int = 10) -> list[SearchResult]:
        """The passages that answer ``query``, best first; none when nothing does."""
        if not fts_query(query) or limit <= 0:
            return []
        return await self._read(lambda c: self._search(c, query, limit))

    async def get(self, source_id: str) -> SearchResult | None:
        row = await self._read(lambda c: c.execute(f"{_ROW} WHERE id = ?", (source_id,)).fetchone())
        return None if row is None else _result(row)

    def vocabulary(self) -> Vocabulary:
        """The index's vocabulary (blocking: call it from a worker thread)."""
        return self._with_reader(self._vocabulary_of)

    def _vocabulary_of(self, conn: sqlite3.Connection) -> Vocabulary:
        with self._lock:
            loaded = self._vocabulary
        if loaded is None:
            loaded = Vocabulary.load(conn)
            with self._lock:
                self._vocabulary = loaded
        return loaded

    def _search(self, conn: sqlite3.Connection, query: str, limit: int) -> list[SearchResult]:
        vocab = self._vocabulary_of(conn)
        understanding = understand(query, vocab)
        scorer = Scorer(understanding, vocab)
        if scorer.empty:
            return []
        match = understood_query(understanding, vocab)
        ranks = {n: r for r, (n,) in enumerate(conn.execute(_RANK, (match, _CANDIDATES)))}
        wanted = set(ranks)
        titles = sorted(understanding.titles)
        if titles:
            marks = ",".join("?" * len(titles))
            sql = f"SELECT n FROM documents WHERE title IN ({marks}) LIMIT {_PAGE_PASSAGES}"
            wanted.update(n for (n,) in conn.execute(sql, titles))
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(f"{_ROW} WHERE n IN ({marks})", sorted(wanted)).fetchall()
        passages = [(Passage.from_row(row, ranks.get(row[0])), row) for row in rows]
        scored = sorted(((scorer.score(p), p, row) for p, row in passages), key=lambda t: -t[0])
        answering = [(s, row) for s, p, row in scored if scorer.answers(s) and scorer.cohesive(p)]
        if not answering:
            return []
        floor = NEAR_BEST * answering[0][0]
        found = [(s, row) for s, row in answering if s >= floor][:limit]
        return [_result(row, score, understanding) for score, row in found]

    async def count(self) -> int:
        row = await self._read(lambda c: c.execute("SELECT count(*) FROM documents").fetchone())
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- blocking parts, always run in a worker thread --

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit, so readers never hold one open.
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL, much faster commits
        return conn

    def _ensure_schema(self) -> None:
        with self._lock:
            if self._ready:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
            finally:
                conn.close()
            self._ready = True

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._with_reader, fn, limiter=self._readers)

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._ensure_schema()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
        try:
            result = fn(conn)
        except BaseException:
            conn.close()  # its state is unknown; do not hand it to the next reader
            raise
        with self._lock:
            if len(self._idle) < self._max_readers:
                self._idle.append(conn)
                return result
        conn.close()
        return result

    def _build(self, paths: Sequence[Path], progress: Progress) -> IndexStats:
        started = time.perf_counter()
        self._ensure_schema()
        tally = _Tally()
        with self._build_lock:
            conn = self._connect()
            try:
                _forget_older_ingests(conn)
                for path in _expand(paths):
                    _ingest(conn, path, tally, progress)
                if tally.added or not vocabulary.is_current(conn):
                    vocabulary.rebuild(conn)
                    with self._lock:
                        self._vocabulary = None
                if tally.added:
                    # Fold the WAL into the main file so it does not linger at its peak size.
                    # No FTS 'optimize': measured here, it grew the file and barely sped queries.
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            finally:
                conn.close()
        seconds, size = time.perf_counter() - started, self.path.stat().st_size
        return IndexStats(documents, seconds=seconds, size_bytes=size, **asdict(tally))


@dataclass
class _Tally:
    added: int = 0
    skipped_files: int = 0
    bad_records: int = 0
    duplicate_ids: int = 0


def _forget_older_ingests(conn: sqlite3.Connection) -> None:
    """Mark every file changed if an older version ingested it, so the next build redoes it."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= _INGEST_VERSION:
        return
    # Not `DELETE`: a file keeps its generation, so its stale records still go.
    conn.execute("UPDATE files SET size = -1")
    conn.execute(f"PRAGMA user_version = {_INGEST_VERSION}")


def _ingest(conn: sqlite3.Connection, path: Path, tally: _Tally, progress: Progress) -> None:
    """Upsert one file's records unless it is unchanged since it was last ingested."""
    key, stat = str(path.resolve()), path.stat()
    old = conn.execute(
        "SELECT size, mtime_ns, generation FROM files WHERE path = ?", (key,)
    ).fetchone()
    if old is not None and tuple(old[:2]) == (stat.st_size, stat.st_mtime_ns):
        tally.skipped_files += 1
        return
    generation = 1 if old is None else old[2] + 1
    conn.execute("BEGIN IMMEDIATE")
    try:
        pending = 0
        for batch in _batches(path, key, generation, tally):
            conn.executemany(_UPSERT, batch)
            tally.added += len(batch)
            pending += len(batch)
            anyio.from_thread.check_cancelled()  # a cancelled build stops at a batch edge
            if progress is not None:
                # On the event loop, so the callback may touch loop-bound objects.
                anyio.from_thread.run_sync(progress, tally.added)
            if pending >= _COMMIT_ROWS:
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                pending = 0
        # Records this file held before and no longer does go away with it.
        conn.execute("DELETE FROM documents WHERE origin = ? AND generation < ?", (key, generation))
        conn.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
            (key, stat.st_size, stat.st_mtime_ns, generation),
        )
        conn.execute("COMMIT")
    except BaseException:
        # The file stays unrecorded, so the next build ingests it again from scratch.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = [*path.glob("*.jsonl"), *path.glob("*.jsonl.gz")]
            files.extend(sorted(p for p in found if p.is_file()))
        else:
            files.append(path)
    return files


def _batches(path: Path, origin: str, generation: int, tally: _Tally) -> Iterator[list[Row]]:
    """Rows to upsert, ``_BATCH_ROWS`` at a time; bad lines and repeated ids go to ``tally``."""
    batch: list[Row] = []
    ids = _DistinctIds()
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = _row(line, origin, generation)
            if row is None:
                tally.bad_records += 1
                continue
            rid = ids.assign(row[0], row[1], row[2], row[5])
            if rid != row[0]:
                tally.duplicate_ids += 1
                if rid is None:
                    continue
                row = (rid, *row[1:])
            batch.append(row)
            if len(batch) >= _BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


class _DistinctIds:
    """Ids for one ingest of one file, so that a repeated id does not overwrite a record.

    MedQuAD gives up to seven sources' passages the same id. A later record whose id
    is taken becomes ``id@source`` (then ``id@source-2``, ...; ``id@2`` without a
    source), unless it repeats an earlier record of that id exactly (same url and
    text): then it is dropped. Ids depend only on the file's order, so every rebuild
    gives the same ones.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._records: set[tuple[str, bytes]] = set()  # (id as written, url-and-text digest)

    def assign(self, rid: str, source: str, url: str, text: str) -> str | None:
        """The id to store the record under, or ``None`` if it repeats an earlier one."""
        # A digest, not the text: a large corpus should not be held twice in memory.
        content = f"{url}\0{text}".encode(errors="surrogatepass")
        key = (rid, hashlib.blake2b(content, digest_size=16).digest())
        if key in self._records:
            return None
        self._records.add(key)
        given = next(i for i in chain([rid], _renamings(rid, source)) if i not in self._taken)
        self._taken.add(given)
        return given


def _renamings(rid: str, source: str) -> Iterator[str]:
    if source:
        yield f"{rid}@{source}"
        yield from (f"{rid}@{source}-{k}" for k in count(2))
    else:
        yield from (f"{rid}@{k}" for k in count(2))


def _row(line: bytes, origin: str, generation: int) -> Row | None:
    try:
        record = json.loads(line)  # ValueError also covers bad UTF-8
        if not isinstance(record, dict):
            return None
        rid, text, title = record.get("id"), record.get("text"), record.get("title")
        if not (isinstance(rid, str) and rid and isinstance(text, str) and text):
            return None
        extra = {k: v for k, v in record.items() if k not in _CORE_FIELDS}
        # allow_nan=False: SQLite's JSON functions would reject NaN inside a trigger.
        extra_json = json.dumps(extra, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return None
    return (
        rid,
        str(record.get("source") or ""),
        str(record.get("url") or ""),
        title if isinstance(title, str) and title else None,
        _year(record.get("year")),
        text,
        extra_json,
        origin,
        generation,
    )


def _year(value: object) -> int | None:
    # The corpus stores years as strings ("1994"); anything else unparseable is unknown.
    try:
        year = int(str(value))
    except ValueError:
        return None
    return year if 0 < year < 10_000 else None


def _result(
    row: Sequence[Any], score: float = 0.0, understanding: Understanding | None = None
) -> SearchResult:
    _, title, text, _, rid, url, year = row
    derived = not title
    return SearchResult(
        source_id=rid,
        title=derived_title(text) if derived else title,
        url=url,
        text=text,
        year=year,
        snippet=snippet(text, understanding),
        title_derived=derived,
        score=score,
    )
