"""The torch-free base of cnclip, which the serving install uses as it is.

The Chinese tokenizer (:mod:`runtime.tokenizer`), image decoding and preprocessing
(:mod:`runtime.images`), model bundles (:mod:`runtime.bundle`, their manifest
:mod:`runtime.bundle_manifest`) and the identities that say which bundle may serve which
index (:mod:`runtime.identity`), encoder sessions behind one protocol (ONNX Runtime on
CPU/CUDA/TensorRT, TensorRT engines, PyTorch programs: :mod:`runtime.sessions`), manifest
files (:mod:`runtime.manifests`), atomic files (:mod:`runtime.files`), device strings
(:mod:`runtime.devices`), prompt templates, exact top-k retrieval and the errors a user
can cause (:mod:`runtime.errors`).

Nothing here imports another package of the project, nor torch at import time.
"""
