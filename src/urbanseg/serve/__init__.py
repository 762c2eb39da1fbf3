"""`urbanseg serve`: an HTTP API and one offline web page around a trained model.

    from urbanseg.serve import create_app, serve
    serve("best.pt", port=8000)                      # blocks; open http://127.0.0.1:8000/
    app = create_app(urbanseg.load("best.pt"))       # or mount / test the FastAPI app yourself

Needs the `serve` extra (FastAPI, uvicorn, python-multipart); CPU is enough.
"""
from .app import create_app
from .server import running, serve

__all__ = ["create_app", "running", "serve"]
