"""The benchmark's report: the issue's targets as ratios, the Markdown table, the chart, the machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import psutil

from bench.plan import BATCHED_MAX, Plan


def targets(res: dict, plan: Plan) -> list[dict]:
    """The issue's targets, as ratios of this run's figures."""
    ip, g = res["in_process"], res["genq"]
    n, t = plan.prompts, plan.new_tokens
    rows: list[dict] = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        rows.append({"target": name, "pass": bool(ok), "detail": detail})

    on = g["batched"].get(str(n), {}).get("tokens_per_s") or 0.0
    off, static = g["batching_off"]["tokens_per_s"], ip["static_batch"]["tokens_per_s"]
    check(
        f"{n}×{t} genq batched ≥ 5× genq batching off",
        on >= 5 * off,
        f"{on:.1f} vs {off:.1f} tokens/s = {on / off:.2f}×",
    )
    check(
        f"{n}×{t} genq batched ≥ 0.85× in-process static batch",
        on >= 0.85 * static,
        f"{on:.1f} vs {static:.1f} tokens/s = {on / static:.2f}×",
    )
    solo, local = g["solo"]["latency_ms"]["p50"], ip["solo"]["generate_ms"]
    check(
        f"one {t}-token job alone within 30 ms of in-process generate",
        solo - local <= 30,
        f"genq {solo:.0f} ms vs in-process {local:.0f} ms: {solo - local:+.0f} ms "
        f"(in-process Engine {ip['solo']['engine_ms']:.0f} ms)",
    )
    p95, quiet = g["mixed"]["short_latency_ms"]["p95"], g["idle_short"]["latency_ms"]["p50"]
    if p95 is None:
        check("mixed load: short-job p95 ≤ 3× idle latency", False, "no short job finished under load")
    else:
        check(
            "mixed load: short-job p95 ≤ 3× idle latency",
            p95 <= 3 * quiet,
            f"p95 {p95:.0f} ms (n={g['mixed']['short_jobs_under_load']}) vs idle p50 {quiet:.0f} ms "
            f"= {p95 / quiet:.2f}×",
        )
    # The reference is idle after warm-up: the weights are mmapped (safetensors) and only become
    # resident at the first forward pass, so idle-after-load undercounts the model by its full size.
    top = str(max(plan.levels))
    peak, idle = g["batched"][top]["peak_rss_mib"], g["worker_rss_mib"]
    rest = idle["idle_after_warmup"]
    check(
        f"worker RSS at {top} concurrent ≤ 2× idle RSS",
        peak <= 2 * rest,
        f"peak {peak:.0f} MiB vs idle {rest:.0f} MiB (warmed up; {idle['idle_after_load']:.0f} MiB right "
        f"after load, weights not yet paged in) = {peak / rest:.2f}×",
    )
    return rows


def table_rows(res: dict, plan: Plan) -> list[dict]:
    """One row per system and load: what the Markdown table and the chart show."""
    ip, g = res["in_process"], res["genq"]
    n, p = plan.new_tokens, plan.prompts

    def row(system: str, clients: object, work: str, fig: dict) -> dict:
        return {
            "system": system,
            "clients": clients,
            "work": work,
            "tokens_per_s": fig.get("tokens_per_s"),
            "p50_ms": fig.get("latency_ms", {}).get("p50"),
            "p95_ms": fig.get("latency_ms", {}).get("p95"),
            "ttft_ms": fig.get("ttft_ms", {}).get("p50"),
            "rss_mib": fig.get("peak_rss_mib"),
        }

    rows = [
        row("transformers generate, one prompt at a time (in-process)", 1, f"{p} × {n}", ip["one_at_a_time"]),
        row("transformers generate, one static batch (in-process)", "—", f"{p} × {n}", ip["static_batch"]),
        row(
            "genq Engine.generate, one batch (in-process, no service)", "—", f"{p} × {n}", ip["engine_batch"]
        ),
        row("genq, batching off (GENQ_MAX_BATCH=1)", p, f"{p} × {n}", g["batching_off"]),
    ]
    for clients, fig in g["batched"].items():
        rows.append(
            row(
                f"genq, batching on (GENQ_MAX_BATCH={BATCHED_MAX})", int(clients), f"{fig['jobs']} × {n}", fig
            )
        )
    m = g["mixed"]
    rows.append(
        row(
            f"genq, short jobs beside {m['long_jobs']} long ({m['long_tokens']} tokens)",
            1,
            f"{m['short_jobs_under_load']} × {m['short_tokens']}",
            {
                "tokens_per_s": m["tokens_per_s"],
                "latency_ms": m["short_latency_ms"],
                "ttft_ms": m["short_ttft_ms"],
                "peak_rss_mib": m["peak_rss_mib"],
            },
        )
    )
    rows.append(
        row(
            "genq, short job on an idle worker",
            1,
            f"{g['idle_short']['jobs']} × {plan.short_tokens}",
            {**g["idle_short"], "tokens_per_s": None},
        )
    )
    return rows


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def markdown(res: dict, plan: Plan) -> str:
    """The figures as a Markdown table, with the targets below it, ready for the README."""
    m = res["machine"]
    lines = [
        f"{res['date']} UTC · {m['cores']} cores, {m['ram_gib']} GiB RAM · {m['device']} · torch {m['torch']}"
        f" · {res['model']} ({res['in_process']['dtype']}), greedy, ignore_eos"
        + (" · --quick" if res["quick"] else ""),
        "",
        "| system | clients | jobs × tokens | tokens/s | p50 latency | p95 latency | p50 TTFT | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table_rows(res, plan):
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['work']} | {_fmt(r['tokens_per_s'])} | "
            f"{_fmt(r['p50_ms'], ' ms')} | {_fmt(r['p95_ms'], ' ms')} | {_fmt(r['ttft_ms'], ' ms')} | "
            f"{_fmt(r['rss_mib'], ' MiB')} |"
        )
    lines += [
        "",
        "Latency is submit → result as the client sees it; TTFT is submit → first streamed token;",
        "in-process RSS is the benchmark process holding one model copy, genq RSS is the worker's.",
        "",
    ]
    lines += [f"- {'PASS' if t['pass'] else 'MISS'} {t['target']}: {t['detail']}" for t in res["targets"]]
    return "\n".join(lines)


def chart(res: dict, plan: Plan, path: Path) -> bool:
    """Draw tokens/s per system and latency per load as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is missing (pip install -r bench/requirements.txt): no chart", flush=True)
        return False
    rows = table_rows(res, plan)
    short = [
        r["system"].split(" (")[0] + (f", {r['clients']} clients" if "batching" in r["system"] else "")
        for r in rows
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    tput = [(s, r["tokens_per_s"]) for s, r in zip(short, rows, strict=True) if r["tokens_per_s"]]
    colors = [
        "#999999" if "transformers" in s else "#4c72b0" if "Engine" in s else "#dd8452" for s, _ in tput
    ]
    ax1.barh([s for s, _ in tput], [v for _, v in tput], color=colors)
    for i, (_, v) in enumerate(tput):
        ax1.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("aggregate tokens/s (higher is better)")
    ax1.tick_params(axis="y", labelsize=8)
    lat = [(s, r) for s, r in zip(short, rows, strict=True) if "genq," in r["system"] and r["p50_ms"]]
    x = np.arange(len(lat))
    for k, (key, label) in enumerate(
        (("ttft_ms", "p50 TTFT"), ("p50_ms", "p50 latency"), ("p95_ms", "p95 latency"))
    ):
        ax2.bar(x + (k - 1) * 0.27, [r[key] or 0 for _, r in lat], 0.27, label=label)
    ax2.set_xticks(x, [s.replace("genq, ", "") for s, _ in lat], rotation=30, ha="right", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms, submit → (log scale, lower is better)")
    ax2.legend(fontsize=8)
    m = res["machine"]
    fig.suptitle(
        f"genq, {res['model']}, {plan.new_tokens}-token jobs · {res['date']} · {m['cores']} cores, "
        f"{m['ram_gib']} GiB · {m['device']}" + (" · quick" if res["quick"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine(device: str) -> dict:
    """What ran the benchmark."""
    import torch
    import transformers

    info = {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "python": sys.version.split()[0],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
