"""Single-hit classification: a calibrated CNN classifier and a few-shot embedding classifier.

Nothing here imports torch at module level; :mod:`.models`, :mod:`.training` and the torch parts of
:mod:`.fewshot` import it when they are used.
"""

#: Class labels of the classifier, in the order of its outputs.
CLASS_NAMES = ("blank", "single", "multiple", "other")
SINGLE = CLASS_NAMES.index("single")

__all__ = ["CLASS_NAMES", "SINGLE"]
