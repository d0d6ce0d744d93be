"""Draw req/s against connections for TokenDealer and its peers from benchmarks/out/peers.json.

.venv/bin/python benchmarks/chart.py      # writes benchmarks/peers.png (needs the `bench` extra)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    data = json.loads((HERE / "out" / "peers.json").read_text())
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, per_connections in data["medians"].items():
        connections = sorted(int(c) for c in per_connections)
        ax.plot(connections, [per_connections[str(c)]["rps"] for c in connections], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(connections, [str(c) for c in connections])
    ax.set_xlabel("concurrent connections (wrk, loopback)")
    ax.set_ylabel("client-credentials grants / s")
    ax.set_title(f"Token endpoint on 2 cores, load generator included (median of {data['rounds']} rounds)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "peers.png")
    print(f"wrote {HERE / 'peers.png'}")


if __name__ == "__main__":
    main()
