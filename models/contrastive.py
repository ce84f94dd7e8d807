"""Contrastive regularisation of the sequence representation (DuoRec-style).

DuoRec (Qiu et al., WSDM 2022) adds to the next-item loss an InfoNCE term that pulls
together two views of the same sequence and pushes apart the other sequences of the
batch, against the representation degeneration of item embeddings trained by a
softmax alone. Its unsupervised view is model-level: the same input through the
encoder twice, with different dropout masks. Sequences of the batch that share the
next item are not negatives (DuoRec's false-negative mask): they should be close.

Here the views are the last-position states of each training window (`encode` for the
loss's own pass, `encode_last` in training mode for the second one), compared by cosine
/ `TEMPERATURE`; `TrainConfig.contrastive_weight` scales the term (0 = off). Training
only: serving is unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812 - conventional alias

from models.metadata import MASKED_SCORE

__all__ = ["TEMPERATURE", "dropout_views_infonce"]

#: Softmax temperature of the cosine similarities (SimCSE uses 0.05, CL4SRec's cosine
#: variants 0.1-1.0; 0.1 keeps the term's gradients beside the next-item loss's).
TEMPERATURE = 0.1


def dropout_views_infonce(
    first: Tensor, second: Tensor, next_items: Tensor, temperature: float = TEMPERATURE
) -> Tensor:
    """NT-Xent over two views of B sequences, same-next-item pairs not negatives.

    Args:
        first: [B, D] one view of each sequence's representation.
        second: [B, D] the other view (same rows).
        next_items: int64 [B] each sequence's next item.
        temperature: Of the cosine similarities.

    Returns:
        Scalar: the mean cross-entropy of finding each view's partner among the other
        2B - 1 views.
    """
    b = first.shape[0]
    z = F.normalize(torch.cat([first, second]), dim=-1)
    sim = (z @ z.t()) * (1.0 / temperature)  # [2B, 2B]
    items = torch.cat([next_items, next_items])
    rows = torch.arange(2 * b, device=z.device)
    partner = (rows + b) % (2 * b)
    # Itself and the other sequences with the same next item are left out; the partner
    # (which has the same next item too) is the target.
    drop = items.unsqueeze(0) == items.unsqueeze(1)
    drop[rows, partner] = False
    return F.cross_entropy(sim.masked_fill(drop, MASKED_SCORE), partner)
