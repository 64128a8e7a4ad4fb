"""The peer to beat: a single-process FastAPI server that calls ``model.predict`` in its handler.

This is how teams commonly serve a scikit-learn model. ``work`` is simulated
compute: it holds the process (and its event loop) for that many milliseconds,
as a heavier model would. Same model file, same payload as inferpool's ``/predict``.
``--runtime onnx`` serves the same forest compiled for onnxruntime (the ``.onnx`` file
written when it was trained), to compare runtimes with everything else equal.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from inferpool.model_store import load_model


class Request(BaseModel):
    X: list[float]
    work: int = 0


def make_app(model_dir: str, runtime: str = "sklearn") -> FastAPI:
    model, _ = load_model(Path(model_dir), runtime="onnx" if runtime == "onnx" else "joblib")
    app = FastAPI()

    @app.post("/predict")
    async def predict(req: Request) -> dict:
        pred = model.predict(np.asarray([req.X]))[0]
        if req.work:
            time.sleep(req.work / 1000)
        return {"prediction": int(pred)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--model-dir", default="models")
    p.add_argument("--runtime", choices=["sklearn", "onnx"], default="sklearn")
    ns = p.parse_args()
    uvicorn.run(
        make_app(ns.model_dir, ns.runtime), host="127.0.0.1", port=ns.port, access_log=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
