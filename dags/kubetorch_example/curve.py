"""A training-curve picture (SVG) from the per-epoch history. Pure Python, no plotting library."""

from __future__ import annotations

from xml.sax.saxutils import escape

WIDTH, HEIGHT, PAD = 640, 320, 48
SERIES = (  # (history key, label, colour, which axis)
    ("loss", "train loss", "#d62728", "left"),
    ("test_loss", "test loss", "#ff9896", "left"),
    ("accuracy", "train accuracy", "#1f77b4", "right"),
    ("test_accuracy", "test accuracy", "#2ca02c", "right"),
)


def _points(values: list[float], low: float, high: float, epochs: int) -> str:
    span = (high - low) or 1.0
    step = (WIDTH - 2 * PAD) / max(epochs - 1, 1)
    return " ".join(
        f"{PAD + i * step:.1f},{HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD):.1f}" for i, v in enumerate(values)
    )


def training_curve_svg(history: list[dict]) -> str:
    """Loss (left axis, from 0) and accuracy (right axis, from its minimum to 1) per epoch."""
    if not history:
        raise ValueError("training_curve_svg needs at least one epoch of history")
    losses = [h[k] for h in history for k in ("loss", "test_loss")]
    accuracies = [h[k] for h in history for k in ("accuracy", "test_accuracy")]
    ranges = {"left": (0.0, max(losses)), "right": (min(accuracies), 1.0)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{PAD}" y="20" font-size="14">SimpleNN on MNIST: {len(history)} epoch(s), '
        f'final test accuracy {history[-1]["test_accuracy"]:.4f}</text>',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="black"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">epoch 1..{len(history)}</text>',
        f'<text x="4" y="{PAD}">loss {ranges["left"][1]:.3f}</text>',
        f'<text x="{WIDTH - PAD}" y="{PAD - 6}" text-anchor="end">acc 1.0</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 14}" text-anchor="end">acc {ranges["right"][0]:.3f}</text>',
    ]
    for n, (key, label, colour, axis) in enumerate(SERIES):
        points = _points([h[key] for h in history], *ranges[axis], len(history))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{PAD + 8 + n * 140}" y="{PAD - 14}" fill="{colour}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
