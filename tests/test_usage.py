"""The status forecast (issue 17 item 5): pure arithmetic at the last hour's rate."""

from router_plugin.usage import forecast

DAY = 86_400.0


def test_a_utc_day_runs_out_at_the_last_hours_rate():
    fc = forecast(remaining=45, capacity=50, resets_at=DAY, last_hour=5, now_s=3_600.0)
    assert fc == {"rate_per_h": 5.0, "runs_out_at": 3_600.0 + 9 * 3_600.0, "lasts": False}


def test_a_utc_day_that_outlasts_its_reset_says_so():
    assert forecast(45, 50, DAY, 1, 80_000.0)["lasts"] is True
    assert forecast(45, 50, DAY, 0, 80_000.0) == {"rate_per_h": 0.0, "runs_out_at": None, "lasts": True}
    assert forecast(0, 50, DAY, 3, 80_000.0)["runs_out_at"] == 80_000.0  # already used up


def test_a_rolling_day_runs_out_only_while_the_rate_beats_its_refill():
    # Groq: 1000 a day refill at ~41.7 an hour
    assert forecast(990, 1000, None, 40, 0.0, rolling=True)["lasts"] is True
    fc = forecast(990, 1000, None, 100, 0.0, rolling=True)
    assert fc["lasts"] is False and abs(fc["runs_out_at"] - 990 / (100 - 1000 / 24) * 3_600) < 1e-6
