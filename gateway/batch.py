"""Validating many files: lazy discovery, optional worker processes, ordered streaming results."""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING

from gateway.errors import Violation
from gateway.ports import Codec

if TYPE_CHECKING:
    from concurrent.futures import Future

STDIN = "-"
CHUNK = 256  # files per task: amortises inter-process traffic, keeps output ordered and prompt


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str
    violations: tuple[Violation, ...] = ()
    unreadable: str | None = None  # why the file could not be read

    @property
    def valid(self) -> bool:
        return self.unreadable is None and not self.violations


def discover(paths: Iterable[str], on_missing: Callable[[str, str], None],
             on_empty: Callable[[str], None] = lambda folder: None) -> Iterator[str]:
    """Files as given, and every *.xml below a folder, sorted per folder, never all at once.
    A folder with no *.xml below it is told to `on_empty`."""
    for path in paths:
        if path == STDIN or os.path.isfile(path):
            yield path
        elif os.path.isdir(path):
            found = False
            for found_path in _walk(path, on_missing):
                found = True
                yield found_path
            if not found:
                on_empty(path)
        else:
            on_missing(path, _not_checkable(path))


def _not_checkable(path: str) -> str:
    """Why `path`, neither a regular file nor a folder, cannot be checked."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
        if exc.errno == errno.ENOENT:
            return "no such file or folder"
        return exc.strerror or str(exc)
    return "not a regular file or a folder (for a pipe, give - and pipe it to standard input)"


def _walk(folder: str, on_missing: Callable[[str, str], None]) -> Iterator[str]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        on_missing(folder, exc.strerror or str(exc))
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, on_missing)
        elif entry.name.endswith(".xml"):
            # a *.xml that is no file (a pipe, a dangling or looping link) is told, as a path
            # given so would be; a symbolic link to a folder is not followed, whatever its name
            try:
                if entry.is_file():
                    yield entry.path
                elif not entry.is_dir():
                    on_missing(entry.path, _not_checkable(entry.path))
            except OSError as exc:  # a link that loops
                on_missing(entry.path, exc.strerror or str(exc))


def _read(path: str, limit: int, stdin: Callable[[], bytes]) -> bytes:
    if path == STDIN:
        return stdin()
    with open(path, "rb", buffering=0) as f:
        # Read what the file holds, and never more than one byte over the limit (enough for the
        # codec to refuse it). Asking for limit+1 every time would allocate 1 MiB per file.
        size = os.fstat(f.fileno()).st_size
        return f.read(min(size, limit) + 1)


class Checker:
    """Checks one chunk of files with one codec; lives in each worker process."""

    def __init__(self, codec: Codec, limit: int, stdin: Callable[[], bytes]) -> None:
        self.codec = codec
        self.limit = limit
        self.stdin = stdin

    def check(self, paths: list[str]) -> list[FileResult | None]:
        """One entry per path, None for a valid file: little to send back between processes."""
        results: list[FileResult | None] = []
        check = self.codec.check
        for path in paths:
            try:
                data = _read(path, self.limit, self.stdin)
            except OSError as exc:
                results.append(FileResult(path, unreadable=exc.strerror or str(exc)))
                continue
            found = check(data)
            results.append(FileResult(path, tuple(found)) if found else None)
        return results


_worker: Checker | None = None


def _init_worker(factory: Callable[[], Checker]) -> None:
    global _worker
    _worker = factory()


def _check_in_worker(paths: list[str]) -> list[FileResult | None]:
    assert _worker is not None, "worker not initialised"
    return _worker.check(paths)


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(islice(items, size)):
        yield chunk


Checked = tuple[list[str], list["FileResult | None"]]
Pending = tuple[list[str], "Future[list[FileResult | None]]"]


def run(paths: Iterator[str], checker_factory: Callable[[], Checker],
        jobs: int = 1) -> Iterator[Checked]:
    """(paths, results) per chunk, in input order; a result is None for a valid file, so the
    caller pays nothing per valid file. With jobs > 1, at most 4 chunks per worker are in
    flight, so memory stays flat however many files there are. No more workers start than
    there are chunks (a pool forks all of its workers at once): one chunk is checked here."""
    chunks = _chunks(paths, CHUNK)
    if jobs > 1:
        ahead = list(islice(chunks, jobs))
        jobs = min(jobs, len(ahead))
        chunks = chain(ahead, chunks)
    if jobs <= 1:
        checker = checker_factory()
        for chunk in chunks:
            yield chunk, checker.check(chunk)
        return
    from concurrent.futures import ProcessPoolExecutor  # only a --jobs run pays for it

    with ProcessPoolExecutor(jobs, initializer=_init_worker,
                             initargs=(checker_factory,)) as pool:
        pending: deque[Pending] = deque()
        for chunk in chunks:
            if STDIN in chunk:  # stdin belongs to this process: check it here
                yield from _drain(pending)
                yield chunk, checker_factory().check(chunk)
                continue
            pending.append((chunk, pool.submit(_check_in_worker, chunk)))
            if len(pending) >= 4 * jobs:
                done, future = pending.popleft()
                yield done, future.result()
        yield from _drain(pending)


def _drain(pending: deque[Pending]) -> Iterator[Checked]:
    while pending:
        chunk, future = pending.popleft()
        yield chunk, future.result()
