"""Explanations of segmentation networks: Captum attributions, Grad-CAM, activations.

``explain(adapter, image, target, method=...)`` returns an :class:`Explanation`;
:mod:`medseg_xai.explain.quality` says whether to trust it.
"""

from medseg_xai.explain.activations import activations
from medseg_xai.explain.core import LAYER_METHODS, METHODS, Explanation, explain

__all__ = ["explain", "Explanation", "activations", "METHODS", "LAYER_METHODS"]

# ``mx.explain(...)`` calls explain(); the package stays importable (``explain.quality``).
from medseg_xai._callable_module import make_callable  # noqa: E402

make_callable(__name__)
