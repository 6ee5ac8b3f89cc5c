"""``python attention_robust_v4.py [flags]``: train AttentionRobustV4 (or a baseline, ``--model``),
select on valid, sweep the test split, report. ``--help`` lists every flag.

The model itself lives in ``modules/attention_robust.py``; ``from attention_robust_v4 import
AttentionRobustV4`` keeps working.
"""

from __future__ import annotations

from modules.attention_robust import AttentionRobustV4
from modules.presence import MODALITIES

__all__ = ["AttentionRobustV4", "MODALITIES", "main"]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: see ``python attention_robust_v4.py --help``."""
    from training.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
