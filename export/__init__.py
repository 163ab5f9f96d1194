"""A PyTorch model to a verified model bundle (:func:`export.bundle.export_bundle`).

- :mod:`export.onnx_export`: each tower to ONNX with dynamic axes, fp16 conversion (LayerNorm,
  softmax and norms kept in fp32), dynamic int8 quantization, ``torch.export`` programs;
- :mod:`export.verify`: parity against PyTorch on real sentences of every length and real
  photos, with thresholds per precision;
- :mod:`export.bundle`: the whole export into a staging directory, verified, then renamed
  into place with its :class:`runtime.bundle_manifest.BundleManifest`;
- :mod:`export.samples`: the built-in sentences and drawings verified on by default.
"""
