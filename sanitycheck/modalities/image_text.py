"""Image-text pairs (CLIP): images explained for a text query; the target is the index of the query prompt.

Loading, explaining and comparing are the image modality's (the model is a
:class:`~sanitycheck.models.clip.ClipSimilarity` whose outputs are prompt similarities); what differs is the
figure data: each method's map for the captioned item and for another item of the scene.
"""

from __future__ import annotations

from typing import Any, Dict

from .image import ImageModality


class ImageTextModality(ImageModality):
    figures = "sanitycheck.report.run_figures:draw_image_text"
    name = "image_text"

    def figure_extras(self, inputs: Any, explainers: Dict[str, Any], k: int, settings: Any) -> Dict[str, Any]:
        from ..report.clip_figures import clip_query_maps

        query = clip_query_maps(inputs.model, explainers, inputs.x, inputs.dataset, min(3, k))
        return {"clip_queries": query} if query else {}
