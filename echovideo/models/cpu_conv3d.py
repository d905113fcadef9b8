"""oneDNN for the CogVideoX VAE's 3-D convolutions on CPU.

PyTorch picks a CPU convolution kernel by a heuristic (`ConvParams::use_mkldnn` in
aten/src/ATen/native/Convolution.cpp): an fp32 conv3d with batch 1, a 3x3 spatial kernel and
N*C*D*H <= 20480 goes to its reference vol2col + GEMM kernel (`slow_conv3d`) because "for some case,
native is faster". The CogVideoX VAE's causal convolutions are exactly that case at small sizes (the
`tiny` preset, low-resolution decodes, the first decoder layers): there the reference kernel is ~5x
slower than oneDNN and takes >90% of a decode. PyTorch has no switch to override the heuristic, so the
VAE's Conv3d modules call oneDNN's convolution directly on CPU. Same convolution, other summation
order: relative difference ~1e-6 in fp32. Other devices and dtypes take PyTorch's usual path.
"""

import torch
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXSafeConv3d
from torch import nn


class OneDNNConv3dMixin:
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if input.device.type == "cpu" and input.dtype == torch.float32 and self.padding_mode == "zeros" \
                and not isinstance(self.padding, str):
            return torch.ops.aten.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation,
                                                     self.groups)
        return super()._conv_forward(input, weight, bias)


class OneDNNConv3d(OneDNNConv3dMixin, nn.Conv3d):
    pass


class OneDNNSafeConv3d(OneDNNConv3dMixin, CogVideoXSafeConv3d):
    pass


ONEDNN_VARIANT = {nn.Conv3d: OneDNNConv3d, CogVideoXSafeConv3d: OneDNNSafeConv3d}


def use_onednn_conv3d(model: nn.Module) -> nn.Module:
    """Switch every Conv3d of `model` to the oneDNN variant in place (weights and keys unchanged).

    A class swap rather than new modules: parameters, hooks and state-dict keys stay as loaded.
    No-op where PyTorch was built without oneDNN.
    """
    if torch.backends.mkldnn.is_available():
        for module in model.modules():
            variant = ONEDNN_VARIANT.get(type(module))
            if variant is not None:
                module.__class__ = variant
    return model
