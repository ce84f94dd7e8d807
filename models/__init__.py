"""recstream models: synthetic data, SASRec-style training, ONNX export and serving.

Import map (torch is confined to training/export so stream workers stay light):

* ``models.contract``, ``models.interactions``, ``models.synthetic``, ``models.metadata``:
  stdlib only.
* ``models.encoding``, ``models.grouping``, ``models.session``, ``models.scorer``:
  numpy + onnxruntime (serving path).
* ``models.metrics``, ``models.ranking``, ``models.vocab``, ``models.windows``: numpy.
* ``models.config``, ``models.network``, ``models.architectures``, ``models.trained``,
  ``models.train``, ``models.warm_start``, ``models.checkpoint``, ``models.evaluate``,
  ``models.export``: need torch.
"""

from __future__ import annotations

__all__: list[str] = []
