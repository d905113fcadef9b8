"""Parallel tiled VAE decode: diffusers' CogVideoX tiles spread over the ranks, blended on rank 0.

Each spatial tile is decoded over all frames with its own causal temporal cache, so tiles are
independent and a rank needs no halo from its neighbours (FastVideo's scheme). Tile grid, frame
batching and blending follow `AutoencoderKLCogVideoX.tiled_decode` step for step, so the result equals
the single-device tiled decode; it is re-stated here because diffusers decodes all tiles in one loop
with no hook for a subset.
"""

import torch
import torch.distributed as dist
from diffusers import AutoencoderKLCogVideoX

from parallel.comm import collective


def tile_origins(vae: AutoencoderKLCogVideoX, height: int, width: int) -> list[tuple[int, int]]:
    """Latent (row, column) of every tile's top-left corner, row-major; one when diffusers would not tile."""
    if not vae.use_tiling or (width <= vae.tile_latent_min_width and height <= vae.tile_latent_min_height):
        return [(0, 0)]
    step_h = int(vae.tile_latent_min_height * (1 - vae.tile_overlap_factor_height))
    step_w = int(vae.tile_latent_min_width * (1 - vae.tile_overlap_factor_width))
    return [(i, j) for i in range(0, height, step_h) for j in range(0, width, step_w)]


def decode_tile(vae: AutoencoderKLCogVideoX, z: torch.Tensor, origin: tuple[int, int]) -> torch.Tensor:
    """One tile through all frame batches, carrying the causal conv cache (diffusers' batching)."""
    i, j = origin
    tile_z = z[..., i: i + vae.tile_latent_min_height, j: j + vae.tile_latent_min_width]
    frames, batch = tile_z.shape[2], vae.num_latent_frames_batch_size
    remaining, cache, parts = frames % batch, None, []
    for k in range(max(frames // batch, 1)):
        start, end = batch * k + (0 if k == 0 else remaining), batch * (k + 1) + remaining
        chunk = tile_z[:, :, start:end]
        if vae.post_quant_conv is not None:
            chunk = vae.post_quant_conv(chunk)
        chunk, cache = vae.decoder(chunk, conv_cache=cache)
        parts.append(chunk)
    return torch.cat(parts, dim=2)


def blend_tiles(vae: AutoencoderKLCogVideoX, rows: list[list[torch.Tensor]]) -> torch.Tensor:
    blend_h = int(vae.tile_sample_min_height * vae.tile_overlap_factor_height)
    blend_w = int(vae.tile_sample_min_width * vae.tile_overlap_factor_width)
    limit_h, limit_w = vae.tile_sample_min_height - blend_h, vae.tile_sample_min_width - blend_w
    out_rows = []
    for i, row in enumerate(rows):
        out_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, blend_h)
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, blend_w)
            out_row.append(tile[:, :, :, :limit_h, :limit_w])
        out_rows.append(torch.cat(out_row, dim=4))
    return torch.cat(out_rows, dim=3)


@torch.no_grad()
def parallel_decode(vae: AutoencoderKLCogVideoX, z: torch.Tensor, group=None) -> torch.Tensor | None:
    """z (B, C, F, h, w), identical on every rank of `group` -> the decoded video on rank 0, None elsewhere.

    Tile k is decoded by rank k % size; every rank decodes all its tiles before sending, so no rank
    waits on rank 0's blending. Rank 0 knows every tile's shape from its own first tile.
    """
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    height, width = z.shape[-2:]
    origins = tile_origins(vae, height, width)
    if len(origins) == 1:  # diffusers' untiled path: nothing to split
        return vae.decode(z).sample if rank == 0 else None
    mine = {k: decode_tile(vae, z, origin) for k, origin in enumerate(origins) if k % size == rank}
    to_global = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
    if rank != 0:
        with collective("VAE tile send"):
            for tile in mine.values():
                dist.send(tile.contiguous(), to_global(0), group=group)
        return None
    first = mine[0]
    scale = first.shape[-1] // min(width, vae.tile_latent_min_width)  # the VAE's spatial upsampling
    tiles = []
    for k, (i, j) in enumerate(origins):
        if k in mine:
            tiles.append(mine[k])
            continue
        shape = (*first.shape[:3], min(vae.tile_latent_min_height, height - i) * scale,
                 min(vae.tile_latent_min_width, width - j) * scale)
        tile = torch.empty(shape, dtype=first.dtype, device=first.device)
        with collective("VAE tile receive"):
            dist.recv(tile, to_global(k % size), group=group)
        tiles.append(tile)
    columns = len({j for _, j in origins})
    return blend_tiles(vae, [tiles[r * columns:(r + 1) * columns] for r in range(len(origins) // columns)])
