"""Reference values written from the released recipe's formulas (numpy only), never from the library
functions that drifted: the fidelity tests compare our code against these."""

import numpy as np
import torch

# (H, W): the five released resolutions, then CogVideoX's 720x480 base, where the crop starts at 0.
RELEASED_SIZES = [(480, 640), (480, 848), (480, 480), (848, 480), (640, 480)]
BASE_SIZE = (480, 720)


def released_crop(rows: int, cols: int, base_rows: int = 30, base_cols: int = 45):
    """models/utils.py `get_resize_crop_region_for_grid` of the released code (Python's round)."""
    if rows / cols > base_rows / base_cols:
        resize_h, resize_w = base_rows, int(round(base_rows / rows * cols))
    else:
        resize_h, resize_w = int(round(base_cols / cols * rows)), base_cols
    top, left = int(round((base_rows - resize_h) / 2.0)), int(round((base_cols - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def released_positions(start: float, stop: float, n: int) -> np.ndarray:
    """diffusers 0.31's grid: numpy linspace without the end point, float32."""
    return np.linspace(start, stop, n, endpoint=False, dtype=np.float32)


def rope_table(head_dim: int, frames: int, rows: int, cols: int, base_rows: int = 30, base_cols: int = 45):
    """(cos, sin), each (frames*rows*cols, head_dim), in float32 numpy as diffusers 0.31 computed them."""
    (top, left), (bottom, right) = released_crop(rows, cols, base_rows, base_cols)

    def axis(dim: int, positions: np.ndarray):
        inverse = (1.0 / np.float32(10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
        angles = np.outer(positions, inverse.astype(np.float32)).astype(np.float32)
        return np.repeat(np.cos(angles), 2, axis=1), np.repeat(np.sin(angles), 2, axis=1)

    t = axis(head_dim // 4, released_positions(0, frames, frames))
    h = axis(head_dim // 8 * 3, released_positions(top, bottom, rows))
    w = axis(head_dim // 8 * 3, released_positions(left, right, cols))
    tables = []
    for part in (0, 1):
        grid = np.concatenate([
            np.broadcast_to(t[part][:, None, None], (frames, rows, cols, t[part].shape[1])),
            np.broadcast_to(h[part][None, :, None], (frames, rows, cols, h[part].shape[1])),
            np.broadcast_to(w[part][None, None, :], (frames, rows, cols, w[part].shape[1])),
        ], axis=-1)
        tables.append(torch.from_numpy(np.ascontiguousarray(grid.reshape(frames * rows * cols, head_dim))))
    return tuple(tables)


def released_padded_shape(height: int, width: int, face_side: int = 512) -> tuple[int, int]:
    """`pad_image_to_aspect_ratio(face, width / height)`: the new long side truncated with int()."""
    ratio = width / height
    if ratio > 1.0:
        return face_side, max(int(face_side * ratio), face_side)
    return max(int(face_side / ratio), face_side), face_side
