"""Defaults shared by the engine and the phase_retriever stage (no heavy imports here)."""

#: Run left to right: 12 x (shrink-wrap, 50 x (HIO, oversampling smoothness)), 8 x (looser shrink-wrap, 50
#: RAAR), 100 ER; then a guided restart (every start halfway to the selected one, docs/benchmarks.md) and a
#: shorter second generation, 4 x 50 HIO, 4 x 50 RAAR, 100 ER; then a polish within a grown support. OSS
#: (Rodriguez et al. 2013) smooths the iterate outside the support after each HIO iteration of the first
#: generation: with a beam stop of twice the test sets' radius it reconstructed 90 of 96 test patterns at or
#: below PyNX's best start against 82 without (docs/benchmarks.md, "Quality with a larger beam stop"). The
#: RAAR stage's thresholds at 0.67 x let the support take in a particle's weak parts once the HIO stage has
#: found its shape (tighter supports cut them and the fit stalls at high photon counts). The last stage runs
#: twice from the same iterates, as that and with the full threshold and half the smoothing width (a sharper
#: edge), and each pattern keeps the run whose lead start has the lower BIC (a choice, ``(A | B)``): 372
#: against 365 of 384 pattern-draws at or below PyNX's best start, the gain flat-topped particles at few
#: photons (docs/benchmarks.md, "The tight fine branch").
FINAL_STAGE = "(SW(scale=0.67)*RAAR**50)**4 * ER**100"
SHARP_FINAL_STAGE = "(SW(smooth=0.5,decay=1)*RAAR**50)**4 * ER**100"
RECIPE_BEFORE_FINAL = ("(SW*(HIO*OSS)**50)**12 * (SW(scale=0.67)*RAAR**50)**8 * ER**100 * GUIDE"
                       " * (SW*HIO**50)**4")
#: Shrink-wrap's supports still cut textured particles' weak rims at high photon counts, where no
#: iteration within them reaches the noise floor: per pattern, the result as it is (one ER iteration)
#: or every start's support grown by 3 px and 1,000 HIO + 200 ER within it, whichever lead has the
#: lower BIC: with two runs 256 against 253 of 256 pattern-draws at or below PyNX's best start, mean
#: error 0.081 against 0.093, at 1.5x the time (docs/benchmarks.md, "Growing the support before a last
#: HIO"). 3,101 iterations per start in all.
POLISH_STAGE = "(ER | GROW(px=3)*HIO**1000*ER**200)"
DEFAULT_RECIPE = f"{RECIPE_BEFORE_FINAL} * ({FINAL_STAGE} | {SHARP_FINAL_STAGE}) * {POLISH_STAGE}"
#: The default until 2026-11-28, one final stage: manifests/spi-phasing.toml keeps it (the choice cost the
#: mock sphere hits 0.017-0.032 of mean error in each of four checks: BIC prefers the support that cuts a
#: sphere's soft rim; docs/benchmarks.md).
SINGLE_FINAL_RECIPE = f"{RECIPE_BEFORE_FINAL} * {FINAL_STAGE}"

#: The phase_retriever stage runs the recipe this many times per pattern, each run from its own random
#: starts (the same free pixels), and keeps the run whose result has the lowest BIC: a wrong solution that
#: one run's starts agreed on fits worse than the other run's right one. 253 against 250 of 256
#: pattern-draws at or below PyNX's best start, mean error 0.093 against 0.106, at twice the cost
#: (docs/benchmarks.md, "Two independent runs"). ``phase()`` itself runs once unless told (``n_runs``).
DEFAULT_RUNS = 2

#: How the start that the others are aligned on and averaged with is picked: the lowest Bayesian
#: information criterion among starts that fit the free pixels (bic, the default), the one most
#: other starts reproduce (consensus), or the lowest free LLK (llk).
SELECTIONS = ("bic", "consensus", "llk")

#: Shrink-wrap smoothing widths where a recipe does not give them: from 1/64 to 1/128 of the array's
#: largest side (2 -> 1 px at 128^2, 4 -> 2 px at 256^2), the same width relative to a particle
#: sampled alike at any array size. Fixed widths in pixels failed most 256^2 test patterns.
AUTO_SIGMA = (1 / 64, 1 / 128)

#: No support may hold more than this many times the size bound the autocorrelation gives
#: (|S - S| >= 2^d |S|, measured at 1 % of the autocorrelation maximum). It stops the supports that
#: otherwise run away to most of the array (the rms rule on dense objects, few photons); 1.5 was the
#: best of 1.0-2.0 on test objects and was confirmed on others (docs/benchmarks.md).
SUPPORT_CAP = 1.5
