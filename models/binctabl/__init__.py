"""BiN-CTABL: the module (:mod:`~lobstream.models.binctabl.model`), its forward pass as a
Numba kernel (:mod:`~lobstream.models.binctabl.kernel`) and the whole-window runner on that
kernel (:mod:`~lobstream.models.binctabl.compiled`, ``CompiledRunner``).

Only the module is imported here (the zoo needs it; the compiled runner imports the zoo).
"""

from lobstream.models.binctabl.model import BiNCTABL, BiNCTABLConfig

__all__ = ["BiNCTABL", "BiNCTABLConfig"]
