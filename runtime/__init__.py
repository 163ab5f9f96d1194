"""The torch-free base of cnclip: tokenizer, image preprocessing, errors.

Nothing here imports torch or any other package of the project, so the serving
install (ONNX Runtime + FAISS) can use it as it is.
"""
