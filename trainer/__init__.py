"""Training Chinese CLIP: the loop, the step, the loss, optimiser and schedules, DDP,
validation and the recipes (``trainer/recipes/``).

``trainer.main(argv)`` is ``cnclip train``: two-stage contrastive training
(stage 1 locks the image tower, stage 2 trains both) or finetuning, on one
process or many (torchrun). The model itself, its checkpoints and initialisation are
:mod:`model`; the dataset readers are :mod:`sources`.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cnclip train`` with ``argv`` (without the program name); returns the exit status."""
    from trainer.cli import main as _main

    return _main(argv)
