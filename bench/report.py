"""Turning benchmark results into BENCHMARKS.md: machine facts, one section per benchmark.

Every section leads with the same summary table (measured, baseline, airlock, ratio, target,
pass/fail) so a reader can scan the file for FAIL; details follow in the section's own tables.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata

SUMMARY_HEADERS = ("measured", "baseline", "airlock", "ratio", "target", "result")


def markdown_table(headers: tuple[str, ...] | list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table; pipes in cells are escaped so a cell can never break a row."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, the table {len(headers)} columns: {row!r}")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


@dataclass
class Section:
    """One benchmark's results: the summary rows, optional detail tables and notes."""

    title: str
    what: str
    summary: list[list[object]] = field(default_factory=list)
    details: list[tuple[str, tuple[str, ...], list[list[object]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float] | None = None  # 1-minute load average at start and end
    not_run: str | None = None  # why the benchmark could not run (a missing tool, say)
    error: str | None = None  # what stopped it part-way
    command: str = ""  # the command that ran it, with its time: shown at its end

    def add(self, measured: str, baseline: str, airlock: str, ratio: str, target: str,
            passed: bool | None) -> None:
        self.summary.append([measured, baseline, airlock, ratio, target, verdict(passed)])

    @property
    def failed(self) -> bool:
        return any(row[-1] == "FAIL" for row in self.summary)

    @property
    def outcome(self) -> str:
        if self.not_run or self.error:
            return "NOT RUN" if self.not_run else "ERROR"
        return "FAIL" if self.failed else "PASS"

    def render(self) -> str:
        out = [f"## {self.title}", ""] + ([self.what, ""] if self.what else [])
        if self.not_run or self.error:
            said = f"**Not run:** {self.not_run}" if self.not_run else f"**Stopped by an error:** {self.error}"
            return "\n".join(out + [said, ""])
        out += [markdown_table(SUMMARY_HEADERS, self.summary), ""]
        for caption, headers, rows in self.details:
            out += [f"**{caption}**", "", markdown_table(headers, rows), ""]
        if self.notes:
            out += [f"- {note}" for note in self.notes] + [""]
        took = f"Took {self.seconds:.0f} s"
        if self.command:
            took += f" (`{self.command}`, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC)"
        if self.load:
            took += f"; 1-minute load average {self.load[0]:.2f} at the start, {self.load[1]:.2f} at the end"
        out += [took + ".", ""]
        return "\n".join(out)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    for name in (package, package + "-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def wrk_version() -> str:
    path = shutil.which("wrk")
    if path is None:
        return "not installed"
    out = subprocess.run([path, "-v"], capture_output=True, text=True).stdout.split()
    return out[1] if len(out) > 1 else "installed"


def machine_rows(threads: int) -> list[list[object]]:
    load = os.getloadavg()
    return [
        ["date (UTC)", datetime.now(UTC).strftime("%Y-%m-%d %H:%M")],
        ["CPU", cpu_model()],
        ["cores (os.cpu_count)", os.cpu_count()],
        ["torch threads", threads],
        ["load average (1/5/15 min) when written", " / ".join(f"{x:.2f}" for x in load)],
        ["python", platform.python_version()],
        ["torch", version("torch")],
        ["vllm", version("vllm")],
        ["peft", version("peft")],
        ["transformers", version("transformers")],
        ["uvicorn / fastapi / aiohttp", f"{version('uvicorn')} / {version('fastapi')} / {version('aiohttp')}"],
        ["wrk", wrk_version()],
    ]


def number(title: str) -> int:
    """A section's number: "3. Gateway overhead" -> 3."""
    return int(title.split(".", 1)[0])


def split_sections(text: str) -> dict[int, str]:
    """The numbered sections of a BENCHMARKS.md, by number, each as its markdown."""
    out, current = {}, None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            head = line[3:].split(".", 1)[0]
            current = int(head) if head.isdigit() else None
            if current is not None:
                out[current] = ""
        if current is not None:
            out[current] += line
    return out


def outcome_of(markdown: str) -> str:
    """PASS, FAIL or NOT RUN for a section kept from an earlier run."""
    if "**Not run:**" in markdown:
        return "NOT RUN"
    if "**Stopped by an error:**" in markdown:
        return "ERROR"
    return "FAIL" if "| FAIL |" in markdown else "PASS"


def document(sections: list[Section], threads: int, command: str, kept: dict[int, str] | None = None) -> str:
    """The whole BENCHMARKS.md: this run's sections, and `kept` ones (by number) from an earlier run."""
    parts = {number(s.title): (s.title, s.outcome, s.render()) for s in sections}
    for n, markdown in (kept or {}).items():
        if n not in parts:
            parts[n] = (markdown.splitlines()[0][3:].strip(), outcome_of(markdown), markdown.rstrip("\n") + "\n")
    ordered = [parts[n] for n in sorted(parts)]
    merged = len(parts) > len(sections)
    head = [
        "# Benchmarks",
        "",
        f"Written by `{command}` (see docs/benchmarks.md)"
        + ("; the sections it did not run are kept from the run before" if merged else "")
        + ". Each benchmark measures airlock and a "
        "baseline in the same run, interleaved, and reports the ratio or figure against it; absolute "
        "times depend on the machine and on whatever else it was running (see the load averages). "
        "Each section ends with the command and time that produced it.",
        "",
        "Overall: " + "; ".join(f"{title}: {outcome}" for title, outcome, _ in ordered) + ".",
        "",
        "## Machine",
        "",
        markdown_table(("", ""), machine_rows(threads)),
        "",
    ]
    return "\n".join(head + [markdown for _, _, markdown in ordered])
