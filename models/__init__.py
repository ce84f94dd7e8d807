"""recstream models: synthetic data, SASRec-style training, ONNX export and serving.

Import map (torch is confined to training/export so stream workers stay light):

* ``models.contract``, ``models.interactions``, ``models.synthetic``, ``models.metadata``:
  stdlib only.
* ``models.encoding``, ``models.scorer``: numpy + onnxruntime (serving path).
* ``models.vocab``, ``models.windows``: numpy (training data preparation).
* ``models.config``, ``models.network``, ``models.trained``, ``models.train``,
  ``models.warm_start``, ``models.checkpoint``, ``models.evaluate``, ``models.export``:
  need torch.
"""

from __future__ import annotations

__all__: list[str] = []
