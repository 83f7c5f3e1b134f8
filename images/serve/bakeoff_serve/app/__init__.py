"""The PyTorch OIP server's FastAPI app: `main.create_app(settings)` and `main.serve(settings)`.

Started by `python -m bakeoff_serve pytorch` (see `bakeoff_serve.__main__`).
"""
