"""Figures logged to MLflow beside a run (not DVC outputs): drawn with matplotlib's Agg backend."""

from __future__ import annotations

from typing import Any


def loss_curve_figure(history: list[dict[str, float]], title: str) -> Any:
    """A matplotlib figure of every loss term per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for key in sorted(k for k in history[0] if k.startswith("loss/")):
        ax.plot(epochs, [h[key] for h in history], label=key.removeprefix("loss/"))
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    return fig
