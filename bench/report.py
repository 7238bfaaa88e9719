"""Results → the table in BENCHMARKS.md (between markers) and bench/results/ratios.png.

    python -m bench.report        # regenerate both from bench/results/*.json
"""

from __future__ import annotations

import json
import os
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DOC = os.path.join(os.path.dirname(HERE), "BENCHMARKS.md")
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
RUNS = ("sqlite", "postgresql", "litellm")

# Ratio goals (gateway cost / direct cost) drawn on the chart.
GOALS = {"upload": 1.5, "content": 1.5, "upload_fanout": 2.0, "flow": 3.0}


def load() -> dict[str, dict[str, Any]]:
    """The latest full result per run (quick smoke runs are never published)."""
    out = {}
    for run in RUNS:
        path = os.path.join(RESULTS, f"{run}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[run] = json.load(f)
    return out


def _fmt(side: dict[str, Any]) -> str:
    parts = []
    if "text" in side:  # a workload that words its own figures
        parts.append(side["text"])
    elif "rps" in side and "p50_ms" in side and "seconds" not in side:
        if side.get("p99_ms") is not None and "upstream_calls" not in side:
            parts.append(f"{side['rps']:,.0f} req/s, p50 {side['p50_ms']:.2f} ms, "
                         f"p99 {side['p99_ms']:.1f} ms")
        else:
            parts.append(f"{side['rps']:,.0f} req/s, p50 {side['p50_ms']:.2f} ms")
    elif "idle_rss_mib" in side:
        parts.append(f"{side['seconds']:.2f} s, idle {side['idle_rss_mib']:.0f} MiB")
    elif "seconds" in side and "mb_s" in side:
        parts.append(f"{side['seconds']:.2f} s ({side['mb_s']:,.0f} MB/s)")
    elif "mb_s" in side:
        parts.append(f"{side['mb_s']:,.0f} MB/s")
        if side.get("rewrite_mb_s"):
            parts.append(f"(rewriting a copy: {side['rewrite_mb_s']:,.0f} MB/s)")
    elif "seconds" in side:
        parts.append(f"{side['seconds'] * 1000:,.0f} ms" if side["seconds"] < 10
                     else f"{side['seconds']:.1f} s")
    if side.get("errors"):
        parts.append(f"**{side['errors']} errors**")
    if "upstream_calls" in side:
        parts.append(f"{side['upstream_calls']} upstream calls")
    if "growth_mib" in side and side.get("growth_mib") is not None:
        peak = f" (peak {side['peak_mib']:.0f})" if side.get("peak_mib") else ""
        parts.append(f"RSS +{side['growth_mib']:.0f} MiB{peak}")
    if side.get("cpu_s_per_mib"):
        parts.append(f"CPU {side['cpu_s_per_mib'] * 1000:.1f} ms/MiB")
    if floor := side.get("floor"):
        parts.append(f"floor (a relay with no gateway logic, same run): {floor['bytes']:.2f}x "
                     f"forwarding bytes, {floor['multipart']:.2f}x parsing the multipart")
    return ", ".join(parts)


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    name = (f"LiteLLM {res.get('litellm_version', '')} proxy, passthrough (no database)"
            if res["target"] == "litellm" else f"gateway, {res['db']}")
    facts = [res["date"], f"{m['nproc']} cores ({m['cpu']}), {m['memory']} RAM",
             f"Linux {m['kernel']}, Python {m['python']}", f"run took {res['seconds']:.0f} s",
             f"load average {res.get('loadavg_before', 0):.1f} before, "
             f"{res.get('loadavg_after', 0):.1f} after"]
    if res["target"] == "gateway" and res.get("code"):
        code = res["code"]
        facts.append(f"commit {code['commit']}" + (" + local changes" if code["modified"]
                                                   else ""))
    if res["target"] == "gateway" and res.get("stack"):
        st = res["stack"]
        facts.append(f"uvloop {'yes' if st.get('uvloop') else 'no'}, httptools "
                     f"{'yes' if st.get('httptools') else 'no'}")
    head = f"**{name}**{' (quick sizes)' if res['quick'] else ''}: " + "; ".join(facts) + ".\n\n"
    rows = ["| Workload | Goal | Direct | Through | Ratio | Result |",
            "|---|---|---|---|---|---|"]
    for w in res["workloads"]:
        verdict = "—" if w.get("pass") is None else ("pass" if w["pass"] else "**FAIL**")
        rows.append(f"| {w['title']} | {w['goal']} | {_fmt(w['direct'])} | "
                    f"{_fmt(w['gateway'])} | {w['ratio']:.2f}x {w['ratio_of']} | {verdict} |")
    return head + "\n".join(rows) + "\n"


def render(results: dict[str, dict[str, Any]]) -> str:
    parts = [START, ""]
    for run in RUNS:
        if run in results:
            parts.append(table(results[run]))
    parts.append("Ratio = cost through / cost direct (time, p50, or direct req/s ÷ through "
                 "req/s), so 1.00x is the physical limit and higher is slower. "
                 "Chart: [bench/results/ratios.png](bench/results/ratios.png).\n")
    parts.append(END)
    return "\n".join(parts)


def write_doc(results: dict[str, dict[str, Any]]) -> None:
    block = render(results)
    if os.path.exists(DOC):
        with open(DOC) as f:
            text = f.read()
        if START in text and END in text:
            before, rest = text.split(START, 1)
            after = rest.split(END, 1)[1]
            text = before + block + after
        else:
            text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\nMade by `make bench` (see bench/run.py).\n\n## Results\n\n" \
            + block + "\n"
    with open(DOC, "w") as f:
        f.write(text)


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in RUNS if r in results]
    ids: list[str] = []
    titles: dict[str, str] = {}
    for r in runs:
        for w in results[r]["workloads"]:
            if w["id"] not in titles:
                ids.append(w["id"])
                titles[w["id"]] = w["title"]
    if not ids:
        return
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(ids) + 2))
    height = 0.8 / len(runs)
    colors = {"sqlite": "#2b7bba", "postgresql": "#59a14f", "litellm": "#e15759"}
    for k, r in enumerate(runs):
        by_id = {w["id"]: w for w in results[r]["workloads"]}
        ys, xs, ok = [], [], []
        for i, wid in enumerate(ids):
            if wid in by_id:
                ys.append(i + (k - (len(runs) - 1) / 2) * height)
                xs.append(by_id[wid]["ratio"])
                ok.append(by_id[wid].get("pass"))
        label = "gateway, " + r if r != "litellm" else "LiteLLM proxy (passthrough)"
        bars = ax.barh(ys, xs, height=height * 0.9, color=colors[r], label=label)
        for bar, x, passed in zip(bars, xs, ok, strict=True):
            mark = "" if passed is None else (" ✓" if passed else " ✗")
            ax.text(bar.get_width() * 1.03, bar.get_y() + bar.get_height() / 2,
                    f"{x:.2f}x{mark}", va="center", fontsize=8)
    for i, wid in enumerate(ids):
        goal = next((v for k2, v in sorted(GOALS.items(), key=lambda kv: -len(kv[0]))
                     if wid.startswith(k2)), None)
        if goal:
            ax.plot([goal, goal], [i - 0.45, i + 0.45], color="black", lw=1.5, ls="--")
    ax.axvline(1.0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(ids)))
    ax.set_yticklabels([titles[i] for i in ids], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("cost through ÷ cost direct (log scale; 1 = direct upstream; dashed = goal)")
    first = results[runs[0]]
    ax.set_title(f"Gateway vs direct upstream — {first['date']}, {first['machine']['nproc']} "
                 f"cores, {first['machine']['cpu']}" + (" (quick)" if first["quick"] else ""))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update() -> None:
    results = load()
    write_doc(results)
    try:
        plot(results, os.path.join(RESULTS, "ratios.png"))
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")


if __name__ == "__main__":
    update()
