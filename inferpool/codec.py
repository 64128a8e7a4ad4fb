"""Compact binary forms for rows and predictions on the wire and in Redis.

Rows travel as float32: scikit-learn's trees cast inputs to float32 before
splitting, so predictions are identical to float64 input at half the bytes,
and decoding is a zero-copy ``np.frombuffer`` instead of a JSON parse.
"""

from __future__ import annotations

import base64

import numpy as np

ROW_DTYPE = np.float32
PRED_DTYPE = np.int64


def rows_to_bytes(rows: np.ndarray) -> bytes:
    return np.ascontiguousarray(rows, dtype=ROW_DTYPE).tobytes()


def rows_from_bytes(data: bytes, n_features: int) -> np.ndarray:
    return np.frombuffer(data, dtype=ROW_DTYPE).reshape(-1, n_features)


def rows_to_b64(rows: np.ndarray) -> str:
    return base64.b64encode(rows_to_bytes(rows)).decode("ascii")


def rows_from_b64(data: str, n_features: int) -> np.ndarray:
    return rows_from_bytes(base64.b64decode(data), n_features)


def preds_to_bytes(preds: np.ndarray) -> bytes:
    return np.ascontiguousarray(preds, dtype=PRED_DTYPE).tobytes()


def preds_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=PRED_DTYPE)
