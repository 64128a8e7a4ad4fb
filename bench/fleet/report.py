"""The fleet report: tables for the terminal and a markdown file, charts as PNG (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.fleet.predict import SweepPoint  # noqa: E402
from bench.fleet.scenarios import RunFigures  # noqa: E402


def fmt_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A markdown table (which also reads as plain text)."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    return "\n".join([line.format(*head), line.format(*("-" * w for w in widths)), *(line.format(*r) for r in rows)])


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f} ms"


def calibration_table(cal: dict, sims: list[dict]) -> str:
    """``sims``: per phase, the simulated means and whether each matched."""
    rows = []
    for ph, sim in zip(cal["phases"], sims, strict=True):
        rows.append((
            ph["name"] if ph["name"] != "warmup" else "warmup (not held: the start from the minimum)",
            f"{ph['rate_rps']:.0f}",
            f"{_ms(ph['work_wait_p95_s'])} / {_ms(sim['work_wait_p95_s'])} {'ok' if sim['work_ok'] else 'MISS'}",
            f"{_ms(ph['online_wait_p95_s'])} / {_ms(sim['online_wait_p95_s'])} {'ok' if sim['online_ok'] else 'MISS'}",
            f"{ph['process_seconds']:.0f} / {sim['process_seconds']:.0f} {'ok' if sim['procs_ok'] else 'MISS'}",
        ))  # fmt: skip
    head = ("phase", "req/s", "work p95 wait real / sim", "online p95 wait real / sim", "process-s real / sim")
    return fmt_table(head, rows)


def sweep_table(points: list[SweepPoint], base: SweepPoint) -> str:
    rows = [
        (
            f"{p.rate_rps:,.0f}", f"{p.tasks_per_s:,.0f}", f"{p.redis_busy:.0%}", _ms(p.redis_wait_mean_s),
            _ms(p.work_wait_p95_s), _ms(None if p.work_wait_p95_s is None or base.work_wait_p95_s is None
                                       else p.work_wait_p95_s - base.work_wait_p95_s), _ms(p.online_wait_p95_s),
        )
        for p in points
    ]  # fmt: skip
    head = ("req/s", "tasks/s", "Redis busy", "Redis op wait (mean)", "work p95 wait", "added by Redis", "online p95")
    return fmt_table(head, rows)


def policy_table(grid: list[tuple[str, RunFigures]]) -> str:
    static = {(s, r.hosts): r.process_seconds for s, r in grid if r.policy.startswith("static")}
    rows = [
        (
            s, str(r.hosts), r.policy, f"{r.slo_attainment:.0%}", _ms(r.wait_p95_s), f"{r.process_seconds:,.0f}",
            f"{r.process_seconds / static[(s, r.hosts)]:.0%}", str(r.actions),
        )
        for s, r in grid
    ]  # fmt: skip
    head = ("workload", "hosts", "policy", "SLO met (10 s windows)", "p95 wait", "process-s", "of static", "actions")
    return fmt_table(head, rows)


def chart_calibration(cal: dict, sim_pool: list[tuple[float, int]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    real = cal.get("pool_timeline") or []
    ax.step([t for t, _ in real], [n for _, n in real], where="post", label="measured (heartbeats)")
    ax.step([t for t, _ in sim_pool], [n for _, n in sim_pool], where="post", label="simulated", alpha=0.8)
    t = 0.0
    for ph in cal["phases"]:
        ax.axvline(t, color="grey", lw=0.5)
        ax.text(t + 1, 0.92, f"{ph['name']} {ph['rate_rps']:.0f}/s", fontsize=8, transform=ax.get_xaxis_transform())
        t += ph["seconds"]
    ax.set(xlabel="s", ylabel="work processes", title="Work pool under the step: real run and model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_sweep(points: list[SweepPoint], limit_rps: float, path: Path) -> None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    rates = [p.rate_rps for p in points]
    a1.plot(rates, [p.redis_busy for p in points], "o-")
    a1.axvline(limit_rps, color="red", ls="--", label=f"limit ~{limit_rps:,.0f} req/s")
    a1.set(xlabel="req/s of the mix", ylabel="Redis busy share", title="One Redis: busy share")
    a1.legend()
    a2.semilogy(rates, [1000 * max(p.work_wait_p95_s or 0, 1e-6) for p in points], "o-", label="work queue p95")
    a2.semilogy(rates, [1000 * max(p.redis_wait_mean_s, 1e-6) for p in points], "s-", label="Redis op wait (mean)")
    a2.axvline(limit_rps, color="red", ls="--")
    a2.set(xlabel="req/s of the mix", ylabel="ms", title="Wait added on the way")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_policies(grid: list[tuple[str, RunFigures]], path: Path) -> None:
    scenarios = sorted({s for s, _ in grid})
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(12, 3.6 * len(scenarios)), squeeze=False)
    for row, scenario in enumerate(scenarios):
        runs = [r for s, r in grid if s == scenario]
        hosts = sorted({r.hosts for r in runs})
        names = list(dict.fromkeys(r.policy for r in runs))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [h_i + i * width for h_i in range(len(hosts))]
            by_h = {r.hosts: r for r in runs if r.policy == name}
            axes[row][0].bar(xs, [by_h[h].slo_attainment if h in by_h else 0 for h in hosts], width, label=name)
            static = {r.hosts: r.process_seconds for r in runs if r.policy.startswith("static")}
            share = [by_h[h].process_seconds / static[h] if h in by_h else 0 for h in hosts]
            axes[row][1].bar(xs, share, width, label=name)
        for ax, title in ((axes[row][0], "SLO attainment"), (axes[row][1], "process-seconds / static")):
            ax.set_xticks([h_i + 0.4 - width / 2 for h_i in range(len(hosts))], [f"{h} hosts" for h in hosts])
            ax.set_title(f"{scenario}: {title}")
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_timelines(grid: list[tuple[str, RunFigures]], scenario: str, hosts: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for s, r in grid:
        if s == scenario and r.hosts == hosts:
            pool = r.records.pool
            ax.step([t for t, _ in pool], [n for _, n in pool], where="post", label=r.policy)
    ax.set(xlabel="s", ylabel="work processes", title=f"{scenario}, {hosts} hosts: pool size by policy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
