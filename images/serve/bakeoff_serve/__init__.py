"""bakeoff_serve: Bakeoff's backends and model preparation.

- the reference model (`model`) and its ONNX export (`onnx_export`),
- the PyTorch Open Inference Protocol server (`app`, run as `python -m bakeoff_serve pytorch`),
- the Triton model-repository generator and the bundled `tritonserver` launcher.
"""
