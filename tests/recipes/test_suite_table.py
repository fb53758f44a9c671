"""The recipe suite's table: with --seeds, a row is compared with the mean of its own probe seeds."""

from scripts.recipe_suite import table

ROW = {"best": 0.95, "final": 0.94, "wall_s": 10.0, "cpu_s": 20.0, "n_val": 100, "ci95": [0.89, 0.98], "steps": 50,
       "result": "probe"}
BASELINES = {"demo": {"linear_probe": {"best": 0.97}, "tutorial_finetune": {"best": 0.80, "epochs": 1, "wall_25_s": 900.0,
                                                                              "cpu_25_s": 900.0}}}


def test_a_single_run_is_compared_with_the_stored_probe():
    line = table({"demo": ROW}, BASELINES).splitlines()[-1]
    assert "| 97.0 |" in line and "probe MISSED" in line and "tutorial ok" in line and "cpu time ok" in line


def test_a_seeded_row_is_compared_with_the_mean_of_its_own_probe_seeds():
    row = {**ROW, "seeds": [0, 1, 2], "best_sd": 0.01,
           "linear_probe_seeds": {"best": 0.953, "seeds": [0, 1, 2], "per_seed": [0.95, 0.96, 0.95]}}
    line = table({"demo": row}, BASELINES).splitlines()[-1]
    assert "mean of seeds 0 1 2, sd 1.0" in line
    assert "| 95.3 |" in line and "probe ok" in line  # 95.0 >= 95.3 - 0.5, the stored 97.0 is not used
