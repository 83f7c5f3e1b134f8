"""HTTP routers of the PyTorch OIP server, included by `bakeoff_serve.app.main.create_app`."""
