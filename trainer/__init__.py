"""Chinese CLIP in PyTorch: the five architectures, checkpoint formats, embedding.

(The training loop itself arrives with the trainer issue.)
"""
