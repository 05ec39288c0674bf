"""Sample grids as PNG files."""

import numpy as np

from keras_dsd.utils.file_utils import atomic_write


def make_grid(images, rows, padding=2, pad_value=255):
    """Tiles `(B, H, W, C)` uint8 images into one `(rows, B / rows)` image."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            "`images` must be uint8 with shape (batch, height, width, "
            f"channels); got shape {images.shape} and dtype {images.dtype}."
        )
    count, height, width, channels = images.shape
    if rows < 1 or count % rows:
        raise ValueError(
            f"`rows`={rows} must be >= 1 and divide the {count} images."
        )
    cols = count // rows
    grid = np.full(
        (
            rows * (height + padding) + padding,
            cols * (width + padding) + padding,
            channels,
        ),
        pad_value,
        dtype=np.uint8,
    )
    for index, image in enumerate(images):
        r, c = divmod(index, cols)
        top = padding + r * (height + padding)
        left = padding + c * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def save_image_grid(images, path, rows, scale=1):
    """Saves images as a PNG grid, written atomically (temp file + rename).

    Args:
        images: uint8 `(B, H, W, C)`; row-major order.
        path: string. Output `.png` path; parent folders are created.
        rows: int. Number of grid rows.
        scale: int. Nearest-neighbour upscaling, for small images.
    """
    from PIL import Image

    grid = make_grid(images, rows)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    return atomic_write(
        path, lambda tmp_path: Image.fromarray(grid).save(tmp_path, "PNG")
    )
