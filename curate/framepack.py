"""Encode and decode the transient ``frames`` blob that carries sampled clip frames between stages.

The split stage samples ``K`` frames of a clip at analysis size and the scorers read them. Between the two they
travel through Ray's object store as one ``bytes`` value per row: a plain ``.npy`` file of a uint8 array
``(K, H, W, 3)`` (RGB). ``.npy`` is self-describing (shape and dtype in its header), needs no pickle, and decodes
without a copy of the pixel data beyond one buffer read.
"""

from __future__ import annotations

import io

import numpy as np


def pack_frames(frames: np.ndarray) -> bytes:
    """Encode ``frames`` (uint8, ``(K, H, W, 3)``, K >= 1) as ``.npy`` bytes; raises ValueError on any other shape."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames must be uint8 (K>=1, H, W, 3), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def unpack_frames(blob: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode a blob written by :func:`pack_frames` back to uint8 ``(K, H, W, 3)``.

    Accepts the forms Ray hands a binary cell over (``bytes``, ``memoryview``, a 0-d/1-d numpy byte array).
    Raises ValueError when the blob is empty or does not hold a uint8 ``(K, H, W, 3)`` array.
    """
    if isinstance(blob, np.ndarray):
        blob = blob.tobytes() if blob.dtype != object else blob.item()
    if blob is None or len(blob) == 0:
        raise ValueError("empty frames blob")
    arr = np.load(io.BytesIO(bytes(blob)), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames blob holds {arr.dtype} {arr.shape}, expected uint8 (K, H, W, 3)")
    return arr


def is_empty_blob(blob: object) -> bool:
    """True for the values a status row carries instead of frames: None, NaN, b"" or an empty array."""
    if blob is None:
        return True
    if isinstance(blob, float):  # pandas/numpy may turn a null into NaN
        return True
    if isinstance(blob, np.ndarray) and blob.dtype == object and blob.ndim == 0:
        return is_empty_blob(blob.item())
    try:
        return len(blob) == 0  # type: ignore[arg-type]
    except TypeError:
        return True


# -------------------------------------------------------------------------------------------------------------
# batch plumbing shared by the scorers
# -------------------------------------------------------------------------------------------------------------


def batch_column(batch, name: str) -> list:
    """Column ``name`` of a batch as a Python list: a dict of numpy arrays or a ``pyarrow.Table``."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch[name].to_pylist()
    return list(batch[name])


def with_columns(batch, values: dict[str, list], types: dict):
    """``batch`` with the columns ``values`` added (or replaced), same rows in the same order.

    A dict of numpy arrays (Ray ``batch_format="numpy"``) gets object arrays of Python values / None. A
    ``pyarrow.Table`` (``batch_format="pyarrow"``) gets typed Arrow columns (``types[name]``) with real nulls.
    Prefer the pyarrow format between scorer stages: Ray's numpy path turns a null float into NaN, and an
    all-null column into a float column of NaN, in every later stage that passes the batch through.
    """
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        out = batch
        for name, vals in values.items():
            arr = pa.array(vals, type=types[name])
            i = out.column_names.index(name) if name in out.column_names else -1
            out = out.set_column(i, name, arr) if i >= 0 else out.append_column(name, arr)
        return out
    out = dict(batch)
    for name, vals in values.items():
        col = np.empty(len(vals), dtype=object)
        for i, v in enumerate(vals):  # element-wise, so a list stays one cell and never becomes a 2-D array
            col[i] = v
        out[name] = col
    return out
