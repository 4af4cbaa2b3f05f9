"""`validate --jobs N`: no more worker processes than there are chunks of files to check."""

from __future__ import annotations

import concurrent.futures
from concurrent.futures import Future
from typing import Any, ClassVar

import pytest

from gateway import batch


class Recorded:
    """Stands in for ProcessPoolExecutor: runs each task at once, notes its worker count."""

    sizes: ClassVar[list[int]] = []

    def __init__(self, max_workers: int, initializer: Any, initargs: tuple[Any, ...]) -> None:
        Recorded.sizes.append(max_workers)
        initializer(*initargs)

    def __enter__(self) -> Recorded:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future


class Counting:
    def check(self, paths: list[str]) -> list[None]:
        return [None] * len(paths)


@pytest.mark.parametrize(("files", "jobs", "workers"), [
    (10, 64, None),  # one chunk: checked in this process, no pool
    (batch.CHUNK * 3, 64, 3),
    (batch.CHUNK * 3, 2, 2),
])
def test_no_more_workers_than_chunks(monkeypatch: pytest.MonkeyPatch, files: int, jobs: int,
                                     workers: int | None) -> None:
    Recorded.sizes = []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Recorded)
    paths = [f"f{n}.xml" for n in range(files)]
    checked = list(batch.run(iter(paths), Counting, jobs))  # type: ignore[arg-type]
    assert [path for chunk, _ in checked for path in chunk] == paths  # all, in order
    assert Recorded.sizes == ([] if workers is None else [workers])
