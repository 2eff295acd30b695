"""Helpers shared by the importers: torch imported on demand, tensors as float64 arrays."""

__all__ = ["require_torch", "np64"]


def require_torch(where):
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError(f"{where}: needs torch (pip install torch)") from None
    return torch


def np64(tensor):
    import torch
    return tensor.detach().cpu().to(dtype=torch.float64).numpy().copy()
