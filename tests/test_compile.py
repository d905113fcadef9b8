"""`torch.compile` of the DiT blocks (off by default): same output as eager within fp32 rounding."""

import pytest
import torch
from test_transformer import cached_iitf_forward, tiny_model


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    model = tiny_model()
    latents, t, fused, eager = cached_iitf_forward(model)
    with torch.no_grad():
        model.compile_blocks()
        compiled = model(latents, t, fused_text=fused)
    assert all(block._compiled_call_impl is not None for block in model.transformer_blocks)
    assert ((compiled - eager).norm() / eager.norm()).item() <= 1e-5
