"""BSARec-style blocks: self-attention beside a learned low-pass filter, made causal.

BSARec (Shin et al., AAAI'24, "An Attentive Inductive Bias for Sequential
Recommendation beyond the Self-Attention") observes that self-attention acts as a
low-pass filter that over-smooths a sequence, and mixes each block's attention with a
frequency-domain branch: the sequence's lowest frequencies (an FFT, keep ``c``
components, inverse FFT) plus the rest rescaled by a learned per-channel ``beta``,
weighted ``alpha`` against attention. Its FFT runs over the whole sequence, which is
right for its training (a loss at the last position only) but would let every
position see its future in ours (a next-item loss at every position, causal).

Here the low-pass branch is causal: a depthwise convolution over the past
``window`` positions (one learned kernel per channel, started as the mean of the last
``CUTOFF`` real events), ``low``; the branch is ``low + beta * (x - low)``, with
``beta`` per channel started at 0.5 (the high frequencies, here what differs from the
recent trend, rescaled). Each block mixes ``ALPHA * branch + (1 - ALPHA) * attention``
inside SASRec's pre-LN block, so everything else (embeddings, positions, masks,
serving) is :mod:`models.architectures.sasrec`'s. Export: a Conv op and element-wise
arithmetic, no FFT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.architectures import register_architecture
from models.architectures.sasrec import SequentialRecommender, _Block

__all__ = ["FilteredRecommender"]

#: Weight of the filter branch against attention (BSARec's alpha).
ALPHA = 0.7
#: Real events the low-pass kernel averages at the start (BSARec's cut-off ``c``).
CUTOFF = 5


class _CausalLowPass(nn.Module):
    """``low + beta * (x - low)`` with ``low`` a learned causal depthwise filter of ``x``."""

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.conv = nn.Conv1d(dim, dim, kernel_size=window, groups=dim, bias=False)
        with torch.no_grad():
            # Kernel taps run oldest -> newest; the newest CUTOFF taps average.
            self.conv.weight.zero_()
            self.conv.weight[:, :, -min(CUTOFF, window) :] = 1.0 / min(CUTOFF, window)
        self.beta = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """Filter ``x`` [B, L, D]; ``valid`` [B, L] zeroes padding before it is averaged."""
        x = x * valid.unsqueeze(-1).to(x.dtype)
        padded = F.pad(x.transpose(1, 2), (self.window - 1, 0))  # [B, D, window - 1 + L]
        low = self.conv(padded).transpose(1, 2)  # position t sees t - window + 1 .. t
        return low + self.beta * (x - low)  # type: ignore[no-any-return]


class _FilteredBlock(_Block):
    """SASRec's pre-LN block whose token mixer is ALPHA * filter + (1 - ALPHA) * attention."""

    def __init__(self, dim: int, n_heads: int, dropout: float, window: int) -> None:
        super().__init__(dim, n_heads, dropout)
        self.low_pass = _CausalLowPass(dim, window)

    def mix(self, h: Tensor, attn_bias: Tensor, valid: Tensor) -> Tensor:
        return ALPHA * self.low_pass(h, valid) + (1 - ALPHA) * super().mix(h, attn_bias, valid)  # type: ignore[no-any-return]

    def mix_last(self, h: Tensor, attn_bias: Tensor, valid: Tensor) -> Tensor:
        filtered = self.low_pass(h, valid)[:, -1:, :]
        return ALPHA * filtered + (1 - ALPHA) * super().mix_last(h, attn_bias, valid)  # type: ignore[no-any-return]


@register_architecture("bsarec")
class FilteredRecommender(SequentialRecommender):
    """SASRec with BSARec-style filter branches (causal); see the module docstring."""

    def new_block(self) -> _Block:
        return _FilteredBlock(self.dim, self.n_heads, self.dropout, self.max_len)
