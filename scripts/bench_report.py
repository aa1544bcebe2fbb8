"""The report of ``make bench``: the per-size table and the targets of DESIGN.md with PASS/FAIL.

Imported by ``scripts/bench.py``; pure functions of the figures it measured,
so they are unit-tested without timing anything.
"""

from __future__ import annotations

import os

MiB = 1024 * 1024
API_RATIO_TARGET = 0.80
RSS_TARGET_MIB = 150.0
TRANSFER_TARGET_MIB_S = 100.0
TRANSFER_FRACTION_TARGET = 0.50
TARGET_SIZE = 512 * MiB


# --- report ------------------------------------------------------------------------------


def fmt_size(size: int) -> str:
    """``512 MiB`` (or bytes / KiB for tiny sizes)."""
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{size} B"


def format_table(header: list[str], rows: list[list[str]], align: str = "", gap: str = "  ") -> list[str]:
    """Plain-text table: a header, a rule, the rows; every column as wide as its widest cell.

    ``align`` has one letter per column, ``l`` or ``r``; by default the first
    column is left-aligned and the others right-aligned (numbers).
    """
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError("every row and the alignment need one entry per column")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align, strict=True)]
        return gap.join(out).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(row) for row in rows]]


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, limit: float | None) -> float | None:
    return value / limit if value is not None and limit else None


def _per_mib(cpu_s: float | None, size: int) -> float | None:
    return None if cpu_s is None else 1000.0 * cpu_s / (size / MiB)


TRANSFER_HEADER = ["size", "up MiB/s", "down MiB/s", "limit up", "limit down", "up/limit", "down/limit",
                   "cust RSS", "suppl RSS", "cust CPU ms/MiB", "suppl CPU ms/MiB", "sha256"]
TRANSFER_LEGEND = [
    "limit up/down: the node's own upload/download code on the same file in this process, no network "
    "(better of 1 and 2 threads)",
    "cust/suppl RSS: peak resident MiB of the customer node / of the largest supplier, up and down",
    "CPU ms/MiB: CPU time the customer / all suppliers spent per MiB moved, up / down (less noisy than MiB/s)",
]


def transfer_row(result: dict) -> list[str]:
    """One table row per file size."""
    size = result["size"]
    limit = result.get("limit") or {}
    up, down = result.get("upload"), result.get("download")
    if result.get("error") and not (up and down):
        return [fmt_size(size), "-", "-", _num(limit.get("up")), _num(limit.get("down")), "-", "-", "-", "-",
                "-", "-", "ERROR"]
    if not (up and down):
        return [fmt_size(size), "-", "-", _num(limit.get("up")), _num(limit.get("down")), "-", "-", "-", "-",
                "-", "-", "-"]
    cust_rss = max(up["customer_rss_mib"], down["customer_rss_mib"])
    suppl_rss = max(up["suppliers_rss_mib"], down["suppliers_rss_mib"])
    cust_cpu = f"{_num(_per_mib(up['customer_cpu_s'], size), 0)} / {_num(_per_mib(down['customer_cpu_s'], size), 0)}"
    suppl_cpu = f"{_num(_per_mib(up['suppliers_cpu_s'], size), 0)} / {_num(_per_mib(down['suppliers_cpu_s'], size), 0)}"
    return [fmt_size(size), _num(up["mib_s"]), _num(down["mib_s"]), _num(limit.get("up")), _num(limit.get("down")),
            _num(_ratio(up["mib_s"], limit.get("up")), 2), _num(_ratio(down["mib_s"], limit.get("down")), 2),
            f"{cust_rss:.0f}", f"{suppl_rss:.0f}", cust_cpu, suppl_cpu, "OK" if result["sha256_ok"] else "MISMATCH"]


def evaluate(api: dict | None, transfers: list[dict] | None) -> list[dict]:
    """Every target of DESIGN.md with its measured value and verdict (PASS, FAIL or NOT MEASURED).

    Speed targets are judged at 512 MiB, or at the largest size run (the row says which).
    """
    checks = []

    def check(name: str, target: str, measured: str | None, ok: bool | None) -> None:
        verdict = "NOT MEASURED" if ok is None else "PASS" if ok else "FAIL"
        checks.append({"name": name, "target": target, "measured": measured or "-", "verdict": verdict})

    done = [t for t in transfers or [] if t.get("upload") and t.get("download")]
    judged = max(done, key=lambda t: (t["size"] == TARGET_SIZE, t["size"]), default=None)
    where = f" at {fmt_size(TARGET_SIZE if judged is None else judged['size'])}"
    if judged is not None and judged["size"] != TARGET_SIZE:
        where += f" (design size {fmt_size(TARGET_SIZE)} not run)"
    for kind in ("upload", "download"):
        figure = judged[kind]["mib_s"] if judged else None
        check(f"{kind}_speed", f"{kind}{where} >= {TRANSFER_TARGET_MIB_S:.0f} MiB/s",
              None if figure is None else f"{figure:.1f} MiB/s",
              None if figure is None else figure >= TRANSFER_TARGET_MIB_S)
    for kind, key in (("upload", "up"), ("download", "down")):
        limit = (judged.get("limit") or {}).get(key) if judged else None
        ratio = _ratio(judged[kind]["mib_s"], limit) if judged else None
        check(f"{kind}_vs_limit", f"{kind}{where} >= {TRANSFER_FRACTION_TARGET:.0%} of the in-process limit",
              None if ratio is None else f"{ratio:.2f} ({judged[kind]['mib_s']:.1f} of {limit:.1f} MiB/s)",
              None if ratio is None else ratio >= TRANSFER_FRACTION_TARGET)
    if done:
        worst = max(done, key=lambda t: max(t["upload"]["customer_rss_mib"], t["download"]["customer_rss_mib"]))
        peak = max(worst["upload"]["customer_rss_mib"], worst["download"]["customer_rss_mib"])
        check("customer_rss", f"customer peak RSS <= {RSS_TARGET_MIB:.0f} MiB at every size",
              f"{peak:.0f} MiB (at {fmt_size(worst['size'])})", peak <= RSS_TARGET_MIB)
    else:
        check("customer_rss", f"customer peak RSS <= {RSS_TARGET_MIB:.0f} MiB at every size", None, None)
    if api is not None:
        check("api_overhead", f"API process_health node / bare >= {API_RATIO_TARGET:.2f}",
              f"{api['ratio']:.2f} ({api['node_rate']:.0f} / {api['bare_rate']:.0f} req/s)",
              api["ratio"] >= API_RATIO_TARGET)
    else:
        check("api_overhead", f"API process_health node / bare >= {API_RATIO_TARGET:.2f}", None, None)
    tried = [t for t in transfers or [] if t.get("upload") or t.get("error")]
    if tried:
        good = sum(1 for t in tried if t.get("sha256_ok"))
        check("round_trip", "every file comes back byte for byte (sha256)", f"{good} of {len(tried)} sizes",
              good == len(tried))
    else:
        check("round_trip", "every file comes back byte for byte (sha256)", None, None)
    return checks


def failed_targets(checks: list[dict]) -> list[str]:
    """Names of the measured targets that were missed."""
    return [c["name"] for c in checks if c["verdict"] == "FAIL"]


def report_lines(api: dict | None, transfers: list[dict] | None, checks: list[dict], context: str = "") -> list[str]:
    """The final block: the per-size table, the API figures and PASS/FAIL per target."""
    lines = ["", "== results " + "=" * 100]
    if context:
        lines.append(context)
    if transfers:
        lines += [""] + format_table(TRANSFER_HEADER, [transfer_row(t) for t in transfers])
        lines += ["  " + text for text in TRANSFER_LEGEND]
        for t in transfers:
            if t.get("error"):
                lines.append(f"  {fmt_size(t['size'])}: {t['error']}")
    if api is not None:
        cpu = (f"; server CPU per request node {api['node_cpu_us']:.0f} us, bare {api['bare_cpu_us']:.0f} us"
               if api.get("node_cpu_us") else "")
        lines += ["", f"API process_health: node {api['node_rate']:.0f} req/s, bare twisted.web "
                      f"{api['bare_rate']:.0f} req/s, node/bare {api['ratio']:.2f}{cpu}"]
    lines += [""] + format_table(["target", "measured", "result"],
                                 [[c["target"], c["measured"], c["verdict"]] for c in checks], align="lrl")
    return lines


def summarize_stacks(lines, top: int = 12) -> tuple[int, list[tuple[int, str]]]:
    """Collapsed stacks (``frame;frame;... count``, py-spy's raw format): total samples and the
    ``top`` functions by samples spent in them (self time), as (samples, frame) with site-packages
    and the working directory trimmed from file names."""
    counts: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, number = line.rstrip("\n").rpartition(" ")
        if not stack or not number.isdigit():
            continue
        total += int(number)
        frames = stack.split(";")
        leaf = frames[-1] if len(frames) > 1 else "(no python frame)"
        for marker in ("site-packages/", os.getcwd() + "/"):
            if marker in leaf:
                name, _, path = leaf.partition(" (")
                leaf = f"{name} ({path.split(marker, 1)[1]}"
        counts[leaf] = counts.get(leaf, 0) + int(number)
    ranked = sorted(((n, frame) for frame, n in counts.items()), key=lambda item: (-item[0], item[1]))
    return total, ranked[:top]

