"""Chinese CLIP in PyTorch: the five architectures, checkpoint formats, embedding and training.

``trainer.main(argv)`` is ``cnclip train``: two-stage contrastive training
(stage 1 locks the image tower, stage 2 trains both) or finetuning, on one
process or many (torchrun). See ``trainer/recipes/`` for example configs.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cnclip train`` with ``argv`` (without the program name); returns the exit status."""
    from trainer.cli import main as _main

    return _main(argv)
