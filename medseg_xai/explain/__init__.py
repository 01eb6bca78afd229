"""Explanations of segmentation networks: Captum attributions, Grad-CAM, activations.

``explain(adapter, image, target, method=...)`` returns an :class:`Explanation`;
:mod:`medseg_xai.explain.quality` says whether to trust it. ``explain_miss(adapter, image, ref,
lesion)`` returns a :class:`MissAnalysis`: why a lesion was missed (or called), from probes
re-run through the model, with gated attribution evidence (:mod:`medseg_xai.explain.miss`).
"""

from medseg_xai.explain.activations import activations
from medseg_xai.explain.core import LAYER_METHODS, METHODS, Explanation, explain
from medseg_xai.explain.features import channel_weights, pooled_features, top_channels
from medseg_xai.explain.miss import MissAnalysis, explain_miss
from medseg_xai.explain.miss_settings import MissSettings
from medseg_xai.explain.weights import compare_weights

# ``weights()`` is ``mx.weights`` / ``medseg_xai.explain.weights.weights``: binding it here
# would shadow the ``explain.weights`` module.
__all__ = ["explain", "Explanation", "activations", "METHODS", "LAYER_METHODS", "explain_miss",
           "MissAnalysis", "MissSettings", "compare_weights", "pooled_features", "channel_weights",
           "top_channels"]

# ``mx.explain(...)`` calls explain(); the package stays importable (``explain.quality``).
from medseg_xai._callable_module import make_callable  # noqa: E402

make_callable(__name__)
