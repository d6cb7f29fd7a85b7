"""Timing helpers: medians of repetitions, and subprocesses with the peak RSS of their process tree."""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class Timing:
    """The repetitions of one measurement (seconds), plus anything the measurement wants to report."""

    samples: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)  # bytes, one per repetition (subprocesses only)
    peak_pss: list[int] = field(default_factory=list)  # the same with shared pages split among sharers

    def add(self, result: ProcessResult) -> None:
        """One repetition measured by `run_process`."""
        self.samples.append(result.seconds)
        self.peak_rss.append(result.peak_rss)
        self.peak_pss.append(result.peak_pss)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> str:
        return f"{min(self.samples):.2f}–{max(self.samples):.2f}"

    @property
    def peak_rss_mb(self) -> float | None:
        """Median over the repetitions of each one's peak. A fork caught before its exec (Dagster
        starts `tail` and a watcher process) briefly counts the parent's pages twice; the median
        keeps such a one-sample spike out of the figure (`rss_detail` shows every repetition)."""
        return statistics.median(self.peak_rss) / 2**20 if self.peak_rss else None

    @property
    def rss_detail(self) -> str:
        per_rep = ", ".join(f"{b / 2**20:,.0f}" for b in self.peak_rss)
        pss = f"; peak PSS {max(self.peak_pss) / 2**20:,.0f} MB" if self.peak_pss else ""
        return f"peak RSS per repetition {per_rep} MB{pss}"


def repeat(
    reps: int,
    body: Callable[[], Any],
    setup: Callable[[], Any] | None = None,
    teardown: Callable[[Any], None] | None = None,
    check: Callable[[Any], None] | None = None,
) -> Timing:
    """Time `body()` `reps` times; `setup()` and `teardown(prepared)` run untimed around each call.

    With a `setup`, `body` receives what it returned (and so does `teardown`). `check(result)`
    runs, untimed, on the first repetition's result; a failed check aborts the benchmark.
    """
    timing = Timing()
    for rep in range(reps):
        prepared = setup() if setup else None
        started = time.perf_counter()
        result = body(prepared) if setup else body()
        timing.samples.append(time.perf_counter() - started)
        if check is not None and rep == 0:
            check(result)
        if teardown is not None:
            teardown(prepared)
        del result
    return timing


class TreeRssSampler:
    """Samples the memory of a process and all its descendants every `interval_s` seconds.

    `peak` is the highest sum of RSS; `peak_pss` the highest sum of PSS (proportional set
    size: a page shared by n processes counts 1/n in each, so a fork is not counted twice).
    """

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> tuple[int, int]:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0
        rss = pss = 0
        for process in processes:
            try:
                info = process.memory_full_info()
            except psutil.AccessDenied:
                try:
                    info = process.memory_info()
                except psutil.Error:
                    continue
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample()
            self.peak = max(self.peak, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class ProcessResult:
    seconds: float
    peak_rss: int
    peak_pss: int
    returncode: int
    stdout: str
    stderr: str


def run_process(argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None, timeout_s: float = 600) -> ProcessResult:
    """Run a command to completion: wall time, peak RSS of its process tree, and its output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=err)
        with TreeRssSampler(process.pid) as sampler:
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return ProcessResult(seconds, sampler.peak, sampler.peak_pss, returncode, out.read(), err.read())


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the project's settings, plus `overrides`."""
    prefixes = ("COVID_", "SOCRATA_", "DAGSTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(overrides)
    return env
