"""Recipe strings and the operator algebra of xfel_dl_plugins.phasing."""

import math

import pytest

from xfel_dl_plugins.errors import StageError
from xfel_dl_plugins.phasing import ER, GUIDE, HIO, OSS, RAAR, SW, RecipeError, parse_recipe


class RecordingState:
    """Stands in for a PhasingState and records what the operators ask of it."""

    def __init__(self):
        self.calls, self.iteration, self.spatial = [], 0, (128, 128)
        self.generation_start = 0

    def iterate(self, rule, beta):
        self.calls.append((rule, beta))
        self.iteration += 1

    def iterate_dm(self, beta):
        self.calls.append(("dm", beta))
        self.iteration += 1

    def shrink_wrap(self, threshold, threshold_rms, sigma, method, force_shrink):
        self.calls.append(("sw", threshold if method == "max" else threshold_rms, round(sigma, 6), method))

    def smooth_outside(self, sigma):
        self.calls.append(("oss", round(sigma, 6)))


def test_issue_example_parses_and_runs_left_to_right():
    op = parse_recipe("(SW*HIO**50)**10 * RAAR**500 * ER**100")
    assert op.n_iterations == 10 * 50 + 500 + 100
    assert [type(step).__name__ for step in op.steps()] == ["SW", "HIO", "RAAR", "ER"]
    state = RecordingState()
    op.apply(state)
    kinds = [c[0] for c in state.calls]
    assert kinds[:2] == ["sw", "hio"] and kinds[51] == "sw"
    assert kinds.count("sw") == 10 and kinds.count("hio") == 500
    assert kinds[-101] == "raar" and kinds[-1] == "er" and kinds[-100] == "er"


def test_parameters_case_and_commas():
    op = parse_recipe("raar(beta=0.75)**3, hio(beta=.5)**2 * Sw(threshold_rms=0.3, method=rms, force_shrink=true) * er")
    state = RecordingState()
    op.apply(state)
    assert state.calls[:3] == [("raar", 0.75)] * 3
    assert state.calls[3:5] == [("hio", 0.5)] * 2
    assert state.calls[5][:2] == ("sw", 0.3) and state.calls[5][3] == "rms"
    assert state.calls[6] == ("er", 0.0)
    # repr is itself a valid recipe describing the same schedule.
    assert parse_recipe(repr(op)).n_iterations == op.n_iterations == 6


def test_sw_defaults_and_sigma_decay():
    op = parse_recipe("SW * ER * SW(sigma=4)", sw_defaults={"threshold": 0.15, "sigma": 3.0, "sigma_end": 1.0, "decay": 10})
    sw1, sw2 = op.ops[0], op.ops[2]
    assert (sw1.threshold, sw1.sigma, sw2.sigma, sw2.threshold) == (0.15, 3.0, 4.0, 0.15)
    assert sw1.current_sigma(0, (64, 64)) == pytest.approx(3.0)
    assert sw1.current_sigma(5, (64, 64)) == pytest.approx(3 ** 0.5)
    assert sw1.current_sigma(100, (64, 64)) == pytest.approx(1.0)


def test_sw_widths_scale_with_the_array_unless_given():
    auto = parse_recipe("SW * ER").ops[0]
    assert auto.widths((128, 128)) == (2.0, 1.0)
    assert auto.widths((256, 256)) == (4.0, 2.0)
    assert auto.widths((64, 64, 64)) == (1.0, 0.5)
    assert auto.current_sigma(0, (256, 256)) == pytest.approx(4.0)
    assert auto.current_sigma(10_000, (256, 256)) == pytest.approx(2.0)
    fixed = SW(sigma=3, sigma_end=1.5)
    assert fixed.widths((256, 256)) == (3.0, 1.5)
    assert SW(sigma=3).widths((256, 256)) == (3.0, 2.0)  # an end not given still scales
    assert parse_recipe(repr(auto) + " * ER").ops[0].widths((256, 256)) == (4.0, 2.0)  # repr parses back
    with pytest.raises(StageError, match="sigma"):
        SW(sigma=-1)


def test_oss_alpha_decays_from_the_array_side_and_is_applied_as_a_real_space_width():
    op = parse_recipe("(HIO*OSS(alpha_end=2, decay=4))**5")
    oss = op.op.ops[1]
    assert (oss.alpha, oss.alpha_end, oss.decay) == (None, 2.0, 4)
    assert oss.current_alpha(0, (128, 128)) == pytest.approx(128.0)
    assert oss.current_alpha(2, (128, 128)) == pytest.approx(16.0)  # geometric: sqrt(128 x 2)
    assert oss.current_alpha(100, (64, 128)) == pytest.approx(2.0)
    state = RecordingState()
    op.apply(state)
    alphas = [128 * (2 / 128) ** min(i / 4, 1) for i in range(1, 6)]  # OSS runs after each HIO iteration
    assert state.calls[1::2] == [("oss", round(128 / (2 * math.pi * a), 6)) for a in alphas]
    assert op.n_iterations == 5  # OSS is no iteration of its own
    assert repr(parse_recipe(repr(oss) + " * ER").ops[0]) == repr(oss)
    assert OSS(alpha="auto").alpha is None and OSS(alpha=40).current_alpha(0, (128, 128)) == 40


def test_sw_scale_loosens_both_thresholds_and_survives_repr():
    op = parse_recipe("SW(scale=0.5, method=max) * ER * SW(scale=0.5, method=rms) * ER")
    state = RecordingState()
    op.apply(state)
    assert state.calls[0][1] == pytest.approx(0.075) and state.calls[2][1] == pytest.approx(0.125)
    assert "scale=0.5" in repr(op) and parse_recipe(repr(op)).ops[0].scale == 0.5
    with pytest.raises(RecipeError, match="scale"):
        parse_recipe("SW(scale=7) * ER")  # 0.15 x 7 > 1: no pixel could pass the max rule
    with pytest.raises(RecipeError, match="sigma"):
        parse_recipe("SW(sigma=wide) * ER")


def test_sw_smooth_scales_both_widths_and_survives_repr():
    fine = parse_recipe("SW(smooth=0.5) * ER").ops[0]
    assert fine.widths((128, 128)) == (1.0, 0.5) and SW(sigma=3, smooth=0.5).widths((64, 64)) == (1.5, 0.25)
    assert "smooth=0.5" in repr(fine) and parse_recipe(repr(fine) + " * ER").ops[0].smooth == 0.5
    assert "smooth" not in repr(SW())
    with pytest.raises(RecipeError, match="smooth"):
        parse_recipe("SW(smooth=0) * ER")


def test_grow_dilates_by_its_radius_and_survives_repr():
    op = parse_recipe("HIO**5 * GROW(px=3) * HIO**5")
    state = RecordingState()
    state.grow_support = lambda radius: state.calls.append(("grow", radius))
    op.apply(state)
    assert state.calls[5] == ("grow", 3.0) and len(state.calls) == 11 and op.n_iterations == 10
    assert parse_recipe(repr(op)).ops[1].px == 3 and parse_recipe("GROW * ER").ops[0].px == 2


def test_a_choice_runs_every_branch_and_survives_repr(monkeypatch):
    """``(A | B)`` hands its branches to multistart.choose_branches; it costs the iterations of both."""
    import xfel_dl_plugins.phasing.multistart as multistart

    def run_all(state, branches):
        for branch in branches:
            state.calls.append(("branch",))
            branch.apply(state)

    monkeypatch.setattr(multistart, "choose_branches", run_all)
    op = parse_recipe("HIO**2 * (RAAR**3 * ER | SW(smooth=0.5) * ER**2)")
    choice = op.ops[1]
    assert op.n_iterations == 8 and len(choice.branches) == 2
    state = RecordingState()
    op.apply(state)
    assert [c[0] for c in state.calls] == ["hio", "hio", "branch", "raar", "raar", "raar", "er", "branch", "sw", "er",
                                           "er"]
    again = parse_recipe(repr(op))
    assert repr(again) == repr(op) and again.ops[1].branches[1].ops[0].smooth == 0.5
    assert repr(parse_recipe("(HIO**2 | ER)**2")) == "(HIO(beta=0.9)**2 | ER)**2"


def test_guide_restarts_the_shrink_wrap_decay_and_survives_repr(monkeypatch):
    """GUIDE hands the state to the guided restart; the SW widths after it decay as in a new run."""
    import xfel_dl_plugins.phasing.multistart as multistart

    def restart(state, mix):
        state.calls.append(("guide", mix))
        state.generation_start = state.iteration

    monkeypatch.setattr(multistart, "guide_starts", restart)
    op = parse_recipe("(SW*ER**10)**2 * GUIDE(mix=0.3) * SW * ER**10")
    assert op.n_iterations == 30 and isinstance(op.steps()[2], GUIDE)
    state = RecordingState()
    op.apply(state)
    sws = [c for c in state.calls if c[0] == "sw"]
    assert ("guide", 0.3) in state.calls and state.calls.index(("guide", 0.3)) == 22
    assert sws[0][2] == sws[2][2] == pytest.approx(2.0) and sws[1][2] < 2.0  # 2 px again after GUIDE
    assert parse_recipe(repr(op)).steps()[2].mix == 0.3
    assert parse_recipe("(SW*ER**10*GUIDE)**2 * SW * ER").n_iterations == 21  # each GUIDE meets an SW


def test_python_operator_algebra_matches_recipe():
    schedule = (SW() * HIO(beta=0.8) ** 3) ** 2 * RAAR() ** 2 * ER() ** 1
    a, b = RecordingState(), RecordingState()
    schedule.apply(a)
    parse_recipe("(SW*HIO(beta=0.8)**3)**2 * RAAR**2 * ER").apply(b)
    assert a.calls == b.calls
    with pytest.raises(StageError):
        HIO() ** -1


@pytest.mark.parametrize("recipe, fragment", [
    ("HIO**50 * FOO**3", "unknown operator 'FOO' at column 11"),
    ("HIO**x", "column 6"),
    ("HIO**2.5", "'2.5'"),
    ("(HIO**5 * ER", "end of recipe"),
    ("HIO**5 @ ER", "'@' at column 8"),
    ("HIO(beta=2)**5", "beta must be in (0, 1]"),
    ("HIO(gamma=0.5)", "bad parameters for HIO"),
    ("SW(method=median)*ER", "method must be 'rms', 'max' or 'both'"),
    ("SW(threshold=1.5)*ER", "threshold (relative to the maximum) must be in (0, 1)"),
    ("HIO ER", "token 'ER' at column 5"),
    ("SW**3", "performs no iteration"),
    ("HIO**5 * GUIDE * HIO**5", "GUIDE must be followed by SW"),
    ("HIO**5 * GUIDE", "GUIDE must be followed by SW"),
    ("(HIO**5 * GUIDE)**2 * SW * ER", "GUIDE must be followed by SW"),
    ("HIO**5 * GUIDE(mix=1) * SW * ER", "mix (the lead's weight) must be in (0, 1)"),
    ("(HIO*OSS(alpha=0))**5", "OSS: alpha must be > 0"),
    ("(HIO*OSS(decay=0))**5", "OSS: decay must be >= 1"),
    ("HIO**5 * (ER**5 | SW * GUIDE * SW * ER)", "may not hold a GUIDE"),
    ("HIO**5 * (ER**5 | )", "token ')' at column 19"),
    ("GROW(px=0) * ER", "GROW: px (the dilation radius) must be in (0, 64]"),
    ("HIO**5 | ER**5", "token '|' at column 8"),
    ("", "recipe is empty"),
])
def test_bad_recipes_give_one_line_errors(recipe, fragment):
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert isinstance(info.value, StageError)
