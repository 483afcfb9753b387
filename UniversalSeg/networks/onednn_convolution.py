"""3D convolutions on oneDNN for every input size when the CPU runs without gradients.

PyTorch picks a CPU convolution backend with a heuristic tuned for 2D
(``ConvParams::use_mkldnn`` in aten/src/ATen/native/Convolution.cpp): a float32 convolution with
batch 1, one group and a 3x3 kernel runs oneDNN only when N x C x D x H > 20480, and otherwise
the reference im2col kernel ``slow_conv3d``. In a 3D U-Net with one window per pass that is most
layers below the first level: measured on an Intel Xeon (2 threads, a busy machine;
``Testing/Benchmarks/cpu_kernels.py``), a 32-channel 3x3x3 convolution on 24^3 took 100 ms through
``slow_conv3d`` against 16 ms through oneDNN (2.7-34x on the layers measured), and a whole forward
pass of the ``small`` preset on one 48^3 window 1.19x less time (outputs within 1.2e-4).

``use_onednn_convolutions(model)`` gives each ``nn.Conv3d`` of the model (an instance attribute,
nothing global) a forward that calls ``aten::mkldnn_convolution`` directly when:
the input is a float32 CPU tensor, autograd is off (inference, validation), autocast is off (under
bf16 autocast PyTorch already chooses oneDNN, and calling the op directly would skip its casts), the
padding is numeric with zeros, and PyTorch was built with oneDNN. Otherwise, and always while
training, PyTorch's own choice runs, so training and its bit-exact resume are unchanged.
"""
from __future__ import annotations

import types

import torch
from torch import nn


def _onednn_conv_forward(self: nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias):
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation,
                                                 self.groups)
    return nn.Conv3d._conv_forward(self, x, weight, bias)


def use_onednn_convolutions(model: nn.Module) -> int:
    """Route the model's eligible 3D convolutions through oneDNN when no gradient is taken (see the
    module's text). Returns how many convolutions were routed; 0 where PyTorch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return 0
    routed = 0
    for module in model.modules():
        if (isinstance(module, nn.Conv3d) and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            module._conv_forward = types.MethodType(_onednn_conv_forward, module)
            routed += 1
    return routed
