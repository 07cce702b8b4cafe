"""Defaults shared by the engine and the phase_retriever stage (no heavy imports here)."""

#: Run left to right: 12 x (shrink-wrap, 50 HIO), 8 x (shrink-wrap, 50 RAAR), then 100 ER.
DEFAULT_RECIPE = "(SW*HIO**50)**12 * (SW*RAAR**50)**8 * ER**100"

#: How the start that the others are aligned on and averaged with is picked: the one most other
#: starts reproduce (consensus), or the lowest free LLK (llk).
SELECTIONS = ("consensus", "llk")
