"""Causal (streaming-native) models and what only they have.

A causal model's feature row t depends on input rows t-R+1..t only (the interface is described
in :mod:`~lobstream.models.causal.cnn`), so it trains by sequence and runs incrementally, one
row of work per event:

- :mod:`~lobstream.models.causal.cnn`, :mod:`~lobstream.models.causal.deeplob`: the modules
  (``cnn_causal``, ``deeplob_causal`` in the zoo), each with its ``incremental_trunk``.
- :mod:`~lobstream.models.causal.hrnn`: the streaming hierarchical RNN (``hrnn_causal``): a
  level LSTM per row, a time convolution and a windowed linear recurrence, one step a row;
  its per-slot state and kernel (``HRNNStream``, :mod:`~lobstream.models.causal.hrnn_kernel`).
- :mod:`~lobstream.models.causal.runner`: ``IncrementalRunner`` (per-instrument state, ``push``
  a row, get its window's probabilities; which state and kernel an architecture gets is its
  entry in ``_ARCHS``), ``compile_program``, ``is_causal`` (of a manifest).
- :mod:`~lobstream.models.causal.kernel`: the Numba kernels the conv models' program runs on.
- :mod:`~lobstream.models.causal.seqtrain`: sequence training and prediction.

Nothing is imported here: the zoo imports the modules, and the runner imports the zoo.
"""
