"""Environment shims that must run before a third-party import.

``ensure_torchvision()`` makes ``import torchvision`` (and so ``open_clip``, ``timm`` and transformers' image
processors) work when torchvision's compiled ops cannot load against the installed torch, e.g. a CUDA build of
torchvision next to a CPU build of torch. In that case torchvision's Python side still registers fake (meta)
kernels for ``torchvision::nms`` and ``torchvision::qnms``, which fails with "operator torchvision::nms does
not exist". Declaring the two operator schemas first lets the import finish; transforms and models then work,
``torchvision.ops`` and ``torchvision.io`` do not (use PIL, PyAV or decord for I/O).

On a machine where the ops library loads, we load it first (exactly as torchvision would) so the real schemas
are in place and nothing is declared. Call this in every process that imports torchvision (Ray workers too).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

import torch

# The schemas torchvision's C++ library declares for these two ops (csrc/ops/nms.cpp and its quantized twin).
_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LOCK = threading.Lock()


def _op_defined(qualname: str) -> bool:
    """True when the dispatcher knows a schema for ``qualname`` (default overload)."""
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
    except RuntimeError:
        return False
    return True


def _try_load_torchvision_ops() -> bool:
    """Load torchvision's compiled ops library the way torchvision does; False when it cannot load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for name in sorted(os.listdir(folder)):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def ensure_torchvision():
    """Import torchvision so that it works here, declaring the nms/qnms schemas first when they are missing.

    Idempotent and thread-safe; returns the ``torchvision`` module.
    """
    with _LOCK:
        if "torchvision" not in sys.modules:
            if not all(_op_defined(q) for q in _SCHEMAS):
                _try_load_torchvision_ops()
            for qualname, schema in _SCHEMAS.items():
                if not _op_defined(qualname):
                    torch.library.define(qualname, schema)
        import torchvision

        return torchvision
