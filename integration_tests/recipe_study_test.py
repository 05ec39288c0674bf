"""Bookkeeping of benchmarks/recipe_study.py: schema, resume, failures."""

import importlib.util
import json
import os
import shutil
import types

import numpy as np
import pytest

STUDY = os.path.join(
    os.path.dirname(__file__), "..", "benchmarks", "recipe_study.py"
)

# A network far smaller than dsd_tiny: the test checks the bookkeeping.
SMALL = {
    "backbone_overrides": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
    # The null label is trained, so that guidance means something.
    "label_dropout": 0.5,
}
CONFIGS = {
    "small": SMALL,
    # A learning rate this large sends the weights to ~1e30 after one
    # step, so the loss of the next step is not finite.
    "diverges": {**SMALL, "learning_rate": 1e30, "warmup_steps": 0},
}


def load_study():
    spec = importlib.util.spec_from_file_location("recipe_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def study_args(results_dir, only, seeds):
    return [
        "train",
        "--results-dir",
        str(results_dir),
        "--only",
        only,
        "--seeds",
        seeds,
        "--steps",
        "3",
        "--samples-per-class",
        "2",
        "--classifier-epochs",
        "1",
        "--subsample",
        "40",
        "--guidance-scales",
        "",
        "--config-json",
        json.dumps(CONFIGS),
    ]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_refuses_a_results_file_of_another_schema(tmp_path):
    study = load_study()
    path = tmp_path / study.RESULTS_FILE
    content = json.dumps({"schema": "keras_dsd.recipe_study/0"}) + "\n"
    path.write_text(content)
    with pytest.raises(ValueError, match="schema 'keras_dsd.recipe_study/0'"):
        study.main(study_args(tmp_path, "small", "0"))
    assert path.read_text() == content  # nothing appended


def test_refuses_a_line_that_is_not_json(tmp_path):
    study = load_study()
    path = tmp_path / study.RESULTS_FILE
    path.write_text('{"schema": "x"\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        study.main(study_args(tmp_path, "small", "0"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One study, shared by the tests that read or extend it: two runs
    that an earlier (crashed) study recorded, then `train` over both
    configurations and seeds 0 and 1."""
    study = load_study()
    folder = tmp_path_factory.mktemp("recipe_study")
    path = folder / study.RESULTS_FILE
    # Finished runs as an earlier study would have left them: they must
    # not be trained again. Their saved models are gone.
    finished = [
        {
            "schema": study.SCHEMA,
            "kind": "train",
            "name": name,
            "key": study.run_key(
                study.resolve_config(CONFIGS[name]), seed, {"steps": 3}
            ),
            "seed": seed,
            "budget": {"steps": 3},
            "status": "ok",
            "preset": f"runs/gone-{name}-{seed}",
            "evaluations": {},
            "marker": "earlier study",
        }
        for name, seed in (("small", 0), ("diverges", 1))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in finished))
    code = study.main(study_args(folder, "diverges,small", "0,1"))
    return types.SimpleNamespace(
        module=study, folder=folder, path=path, finished=finished, code=code
    )


def copy_of(study, tmp_path):
    """A copy of the shared study's folder, for a test that writes."""
    folder = tmp_path / "study"
    shutil.copytree(study.folder, folder)
    return folder


@pytest.mark.large(except_backend="torch")
def test_resumes_without_repeating_and_records_non_finite_runs(study):
    assert study.code == 0
    records = read_lines(study.path)
    assert records[:2] == study.finished
    trained = [(r["name"], r["seed"], r["status"]) for r in records[2:]]
    # The diverging run fails without stopping the study; each
    # configuration trains only the seed it did not have.
    assert trained == [("diverges", 0, "failed"), ("small", 1, "ok")]
    assert records[2]["reason"] == "non-finite loss at step 2"
    assert "preset" not in records[2]  # nothing saved for a failed run
    run = records[3]
    assert run["steps"] == 3
    assert run["budget"] == {"steps": 3}
    assert run["config"]["backbone_overrides"] == SMALL["backbone_overrides"]
    assert run["config"]["label_dropout"] == 0.5
    assert run["config"]["learning_rate"] is None  # compile()'s optimizer
    assert run["scoring"]["num_train"] == 100  # every 40th of 4,000
    assert run["scoring"]["num_held_out"] == 25  # every 40th of 1,000
    # The real-vs-real floor uses as many real digits as samples (2 x 10).
    assert run["scoring"]["frechet_floor_samples"] == 20
    # No guidance scale asked for: the unguided sampler only, on the
    # sampling EMA, the online weights and the teacher.
    assert sorted(run["evaluations"]) == [
        "heun16_shift1_unguided",
        "heun16_shift1_unguided_online",
        "heun16_shift1_unguided_teacher",
    ]
    scores = run["evaluations"]["heun16_shift1_unguided"]
    assert scores["nfe"] == 31  # Heun, 16 steps
    # 20 samples: the accuracy is a multiple of 1/20.
    assert scores["class_accuracy"] * 20 == pytest.approx(
        round(scores["class_accuracy"] * 20)
    )
    assert os.path.isfile(study.folder / run["preset"] / "task.json")
    assert os.path.isfile(study.folder / study.module.CLASSIFIER_FILE)


@pytest.mark.large(except_backend="torch")
def test_a_finished_study_is_left_as_it_was(study, tmp_path):
    folder = copy_of(study, tmp_path)
    path = folder / study.module.RESULTS_FILE
    before = path.read_text()
    # A second pass has nothing left to do.
    args = study_args(folder, "diverges,small", "0,1")
    assert study.module.main(args) == 0
    assert path.read_text() == before


def test_report_gives_mean_and_spread_over_seeds(tmp_path, capsys):
    study = load_study()
    path = tmp_path / study.RESULTS_FILE
    accuracies = [0.5, 0.7, 0.6]
    with open(path, "w") as f:
        for seed, accuracy in enumerate(accuracies):
            record = {
                "schema": study.SCHEMA,
                "kind": "train",
                "name": "defaults",
                "key": f"k/{seed}",
                "seed": seed,
                "budget": {"steps": 9},
                "status": "ok",
                "steps": 9,
                "train_seconds": 1.0,
                "scoring": {"frechet_floor": 2.0},
                "autoencoder": {
                    "reconstruction_psnr_db": 20.0,
                    "latent_effective_rank": 5.0,
                    "latent_std": 1.0,
                },
                "evaluations": {
                    "heun16_shift1_unguided": {
                        "class_accuracy": accuracy,
                        "frechet_distance": 5.0,
                        "precision": 0.9,
                        "recall": 0.4,
                        "nfe": 31,
                    }
                },
            }
            f.write(json.dumps(record) + "\n")
        failed = {
            "schema": study.SCHEMA,
            "kind": "train",
            "name": "defaults",
            "key": "k/3",
            "seed": 3,
            "budget": {"steps": 9},
            "status": "failed",
            "reason": "non-finite loss at step 1",
        }
        f.write(json.dumps(failed) + "\n")
    assert study.main(["report", "--results-dir", str(tmp_path)]) == 0
    row = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| defaults")
    ][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "4 (1)"  # four seeds, one failed
    # mean 0.6, sample standard deviation 0.1 of (0.5, 0.7, 0.6)
    assert np.std(accuracies, ddof=1) == pytest.approx(0.1)
    assert cells[3] == "0.6 ± 0.1"
    assert cells[5] == "2.5 ± 0"  # FD / floor = 5 / 2 on every seed


@pytest.mark.backend_independent
def test_guidance_intervals_on_the_command_line_and_in_names():
    study = load_study()
    args = study.parse_args(
        ["resample", "--guidance-scales", "none,2", "--guidance-intervals"]
        + ["none,0.3:1"]
    )
    assert args.guidance_intervals == [None, (0.3, 1.0)]
    assert study.evaluation_name("heun", 16, 1.0, 2.0, (0.3, 1.0)) == (
        "heun16_shift1_cfg2_interval0.3-1"
    )
    # Without an interval the names of earlier results are unchanged.
    assert study.evaluation_name("heun", 16, 1.0, None) == (
        "heun16_shift1_unguided"
    )
    for bad in ("0.5:0.2", "0.3", "a:b", "0:1.5"):
        with pytest.raises(SystemExit):
            study.parse_args(["resample", "--guidance-intervals", bad])


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "sampler,scale,interval,expected",
    [
        # Euler, 2 steps: evaluations at t = 0 and 0.5.
        ("euler", None, None, 2),
        ("euler", 2.0, None, 4),
        ("euler", 2.0, (0.0, 0.25), 3),
        ("euler", 2.0, (0.6, 1.0), 2),
        # Heun, 2 steps: t = 0, 0.5 (corrector), 0.5 (final Euler step).
        ("heun", 2.0, None, 6),
        ("heun", 2.0, (0.0, 0.25), 4),
        ("heun", 2.0, (0.5, 1.0), 5),
    ],
)
def test_network_evaluations_count_guided_ones_twice(
    sampler, scale, interval, expected
):
    study = load_study()
    nfe = study.num_network_evaluations(sampler, 2, 1.0, scale, interval)
    assert nfe == expected


@pytest.mark.large(except_backend="torch")
def test_resample_scores_guidance_intervals_of_saved_runs(
    study, tmp_path, capsys
):
    folder = copy_of(study, tmp_path)
    path = folder / study.module.RESULTS_FILE
    trained = read_lines(path)
    common = [
        "resample",
        "--results-dir",
        str(folder),
        "--only",
        "small",
        "--samples-per-class",
        "2",
        "--subsample",
        "40",
        "--samplers",
        "euler",
        "--num-steps",
        "2",
        "--config-json",
        json.dumps(CONFIGS),
    ]
    # Another budget than the runs': nothing to score.
    assert study.module.main(common + ["--steps", "4"]) == 0
    assert read_lines(path) == trained
    capsys.readouterr()
    args = common + ["--steps", "3", "--guidance-scales", "none,2"]
    args += ["--guidance-intervals", "none,0.5:1"]
    assert study.module.main(args) == 0
    # The earlier study's seed 0 has no saved model left: it is named and
    # skipped. Seed 1 is scored.
    assert "small seed 0: no saved model at" in capsys.readouterr().out
    records = read_lines(path)[len(trained) :]
    assert [r["seed"] for r in records] == [1, 1, 1]
    names = [r["evaluation"] for r in records]
    # The interval applies to the guided scale only.
    assert names == [
        "euler2_shift1_unguided",
        "euler2_shift1_cfg2",
        "euler2_shift1_cfg2_interval0.5-1",
    ]
    assert [r["scores"]["nfe"] for r in records] == [2, 4, 3]
    assert records[2]["guidance_interval"] == [0.5, 1.0]
    # Run again: everything is scored already.
    assert study.module.main(args) == 0
    assert len(read_lines(path)) == len(trained) + 3
