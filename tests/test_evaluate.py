"""geor_jax.evaluate: metrics from answer texts, the report and the plots."""

import numpy as np
import PIL.Image
import pytest

from geor_jax import evaluate, geo, regions

PARIS, TOKYO = (48.8566, 2.3522), (35.6895, 139.6917)


def test_metrics_from_answers():
    truth_regions = regions.chain_of_region([PARIS, PARIS, TOKYO, TOKYO])
    texts = [
        regions.render_answer(truth_regions[0], *PARIS),  # exact
        "Country: France\nState: Ile-de-France\nCity: Paris\nCoordinates: (49.2566, 2.3522)",  # ~44 km
        "Country: France\nState: X\nCity: Y\nCoordinates: (35.6895, 139.6917)",  # right place, wrong country
        "no idea",  # invalid
    ]
    metrics, per_example = evaluate.evaluate_answers(texts, [PARIS[0]] * 2 + [TOKYO[0]] * 2,
                                                     [PARIS[1]] * 2 + [TOKYO[1]] * 2, truth_regions)
    assert metrics["acc@1km"] == pytest.approx(0.5)  # exact answers: 0 and 0 km
    assert metrics["acc@25km"] == pytest.approx(0.5) and metrics["acc@200km"] == pytest.approx(0.75)
    assert metrics["valid_rate"] == pytest.approx(0.75)
    assert metrics["country_accuracy"] == pytest.approx(0.5)  # the third names France for Tokyo
    assert metrics["consistency"] == pytest.approx(2 / 3)
    assert metrics["geoguessr_mean"] == pytest.approx(
        (5000 + float(geo.geoguessr_score(per_example["distance_km"][1])) + 5000) / 4, rel=1e-4)
    assert np.isinf(per_example["distance_km"][3]) and metrics["count"] == 4
    assert metrics["median_km"] == pytest.approx(per_example["distance_km"][1] / 2, rel=1e-3)
    expected = [1.0, float(geo.distance_reward(per_example["distance_km"][1])), 1.0, 0.0]  # the paper's reward
    np.testing.assert_allclose(per_example["reward"], expected, rtol=1e-5)
    assert metrics["reward_mean"] == pytest.approx(np.mean(per_example["reward"]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 texts, 1 lat"):
        evaluate.evaluate_answers(["a", "b"], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        evaluate.evaluate_answers([], [], [])


def test_report_and_plots(tmp_path):
    sft = {"acc@1km": 0.1, "acc@25km": 0.3, "median_km": 812.25, "valid_rate": 0.9, "count": 20}
    grpo = {"acc@1km": 0.15, "acc@25km": 0.4, "median_km": 400.0, "valid_rate": 1.0, "count": 20}
    report = evaluate.markdown_report({"SFT": sft, "SFT + GRPO": grpo}, title="Demo")
    assert "| run | acc@1km (%) | acc@25km (%) | median_km | valid_rate (%) |" in report
    assert "| SFT + GRPO | 15.0 | 40.0 | 400.0 | 100.0 |" in report and "20 images." in report

    rng = np.random.default_rng(0)
    d = rng.lognormal(5, 2, 50)
    evaluate.plot_error_cdf({"SFT": d, "SFT + GRPO": d / 2}, str(tmp_path / "cdf.png"))
    lat, lon = rng.uniform(-60, 60, 50), rng.uniform(-180, 180, 50)
    evaluate.plot_world_scatter(lat + 1, lon + 1, lat, lon, rng.random(50) < 0.8, str(tmp_path / "world.png"))
    for name in ("cdf.png", "world.png"):
        with PIL.Image.open(tmp_path / name) as image:
            assert image.size[0] > 500 and image.size[1] > 300
            # Not blank: a real plot has many distinct colours.
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20
