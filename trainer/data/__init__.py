"""The trainer's input pipeline: augmentation (numpy and Pillow) and the streaming loader
(PyTorch) over the readers of :mod:`sources`."""
