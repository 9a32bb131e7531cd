"""RL strategy search without nnU-Net: the strategy file format, the searchers, and the controller's learning."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from nnunet_autoaug.policy import PRESETS
from nnunet_autoaug.rl.searchers import PPOController, make_searcher, run_synthetic
from nnunet_autoaug.rl.strategy import (
    DEFAULT_STRATEGY,
    DIMENSIONS,
    LR_RANGE,
    Strategy,
    StrategyError,
    lr_from_unit,
    lr_to_unit,
)

DIMS = len(DIMENSIONS)


def test_strategy_table_and_lr_mappings() -> None:
    assert DIMENSIONS[-1] == "lr" and {"sharpen", "blur", "noise", "contrast", "shift", "brightness", "gamma",
                                        "rotation", "scaling", "elastic", "mirror"} <= set(DIMENSIONS)
    assert lr_from_unit(0.0) == pytest.approx(1e-4) and lr_from_unit(1.0) == pytest.approx(1e-2)
    assert lr_from_unit(0.5) == pytest.approx(1e-3)  # log-uniform by default
    assert lr_from_unit(0.5, "linear") == pytest.approx(0.00505)
    for mapping in ("log", "linear"):
        assert lr_to_unit(lr_from_unit(0.3, mapping), mapping) == pytest.approx(0.3)
    assert DEFAULT_STRATEGY.policy == PRESETS["nnunet_default"] and DEFAULT_STRATEGY.learning_rate == 1e-2


def test_strategy_json_round_trip(tmp_path) -> None:
    unit = np.linspace(0.05, 0.95, DIMS)
    s = Strategy.from_unit(unit)
    assert np.allclose(s.to_unit(), unit)
    s.save(tmp_path / "s.json")
    assert Strategy.load(tmp_path / "s.json") == s
    assert Strategy.from_config(json.loads(json.dumps(s.to_config()))) == s
    assert json.loads((tmp_path / "s.json").read_text())["format"] == "nnunet_autoaug.strategy"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"learning_rate": 0.01}', "missing field 'policy'"),
    ('{"policy": {"space": "rl", "values": {}}, "learning_rate": 0.01, "extra": 1}', "unknown top-level"),
    ('{"format": "nnunet_autoaug.policy", "space": "rl", "values": {}}', "is a policy file"),
])
def test_bad_strategy_files_fail_with_a_reason(tmp_path, content: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(StrategyError, match=message):
        Strategy.load(tmp_path / "bad.json")


def test_bad_strategy_values_fail(tmp_path) -> None:
    good = DEFAULT_STRATEGY.to_json_dict()
    with pytest.raises(StrategyError, match="learning_rate must be"):
        Strategy.from_json_dict({**good, "learning_rate": 0.5})
    with pytest.raises(StrategyError, match="learning_rate must be"):
        Strategy.from_json_dict({**good, "learning_rate": "fast"})
    bad_policy = {**good, "policy": {**good["policy"], "values": {**good["policy"]["values"], "noise": 1.5}}}
    with pytest.raises(StrategyError):
        Strategy.from_json_dict(bad_policy)
    with pytest.raises(StrategyError, match="does not exist"):
        Strategy.load(tmp_path / "missing.json")
    # a folder stands for the strategy in it: a search's best one, else a trainer's
    with pytest.raises(StrategyError, match="holds no best_strategy.json or autoaug_strategy.json"):
        Strategy.load(tmp_path)
    other = Strategy.from_json_dict({**good, "learning_rate": 1e-3})
    other.save(tmp_path / "autoaug_strategy.json")
    assert Strategy.load(tmp_path) == other
    DEFAULT_STRATEGY.save(tmp_path / "best_strategy.json")
    assert Strategy.load(tmp_path) == DEFAULT_STRATEGY
    assert LR_RANGE == (1e-4, 1e-2)


def _experiment(name: str, seed: int, budget: int = 48, concurrent: int = 4) -> float:
    """Best noise-free reward found within the budget on a quadratic with a random optimum (known, max 1)."""
    optimum = np.random.RandomState(1000 + seed).uniform(0.1, 0.9, DIMS)
    history = run_synthetic(make_searcher(name, DIMS, seed=seed), lambda u: 1 - np.mean((u - optimum) ** 2), budget,
                            concurrent, torch.Generator().manual_seed(seed), noise=0.01)
    rewards = np.array([r for _, r in history])
    return float(rewards.max()), float(rewards[-8:].mean())


def test_controller_beats_random_search_on_a_known_optimum() -> None:
    ppo = np.array([_experiment("ppo", s) for s in range(6)])
    rnd = np.array([_experiment("random", s) for s in range(6)])
    # the controller's late proposals are much closer to the optimum than random ones (0.94 vs 0.87 measured) ...
    assert ppo[:, 1].mean() > rnd[:, 1].mean() + 0.04
    # ... and it finds a better strategy with the same budget, on average and in most seeds
    assert ppo[:, 0].mean() > rnd[:, 0].mean() + 0.008
    assert (ppo[:, 0] > rnd[:, 0]).sum() >= 4


@pytest.mark.parametrize("name", ["ppo", "ppo-literal", "hill-discrete", "hill-continuous", "random"])
def test_searcher_state_round_trip_continues_identically(name: str) -> None:
    a, gen_a = make_searcher(name, DIMS, seed=3), torch.Generator().manual_seed(5)
    f = lambda u: 1 - float(np.mean((u - 0.7) ** 2))
    for _ in range(3):
        s = a.sample(2, gen_a)
        a.update(s, [-f(np.asarray(c["unit"])) for c in s])
    state = pickle.loads(pickle.dumps(a.state_dict()))
    b, gen_b = make_searcher(name, DIMS, seed=99), torch.Generator()
    b.load_state_dict(state)
    gen_b.set_state(gen_a.get_state())
    for _ in range(2):
        sa, sb = a.sample(2, gen_a), b.sample(2, gen_b)
        assert [c["unit"] for c in sa] == [c["unit"] for c in sb]
        a.update(sa, [-f(np.asarray(c["unit"])) for c in sa])
        b.update(sb, [-f(np.asarray(c["unit"])) for c in sb])
    assert np.allclose(a.best(), b.best())


def test_ppo_samples_are_stochastic_and_literal_mode_is_not() -> None:
    g = torch.Generator().manual_seed(0)
    beta, literal = PPOController(DIMS, "beta", seed=1), PPOController(DIMS, "literal", seed=1)
    a = np.array([c["unit"] for c in beta.sample(2, g)])
    assert np.all((a > 0) & (a < 1)) and not np.allclose(a[0], beta.sample(1, g)[0]["mean"])
    c = literal.sample(1, g)[0]
    assert c["unit"] == c["mean"]  # the paper as written: the first softmax channel is the action


def test_warm_started_controller_proposes_near_its_start_and_the_paper_controller_does_not() -> None:
    start = DEFAULT_STRATEGY.to_unit()  # nnU-Net's augmentation and learning rate 1e-2 (unit 1.0)
    paper = PPOController(DIMS, "beta", start=start, seed=1)
    warm = PPOController(DIMS, "beta", start=start, seed=1, start_mean=True)
    target = np.clip(start, 0.05, 0.95)
    assert np.abs(paper.mean_strategy() - 0.5).max() < 0.2  # untrained: the middle of every range
    assert np.abs(warm.mean_strategy() - target).max() < 0.05
    g = torch.Generator().manual_seed(0)
    lrs = [Strategy.from_unit(c["unit"]).learning_rate for c in warm.sample(20, g)]
    assert np.median(lrs) > 4e-3  # near nnU-Net's 1e-2 rather than the paper controller's 1e-3
    assert np.all(np.asarray(lrs) <= LR_RANGE[1])


def test_warm_start_outlasts_the_first_reward_which_only_sets_the_baseline() -> None:
    start, g = DEFAULT_STRATEGY.to_unit(), torch.Generator().manual_seed(0)
    paper = PPOController(DIMS, "beta", start=start, seed=3)
    warm = PPOController(DIMS, "beta", start=start, seed=3, start_mean=True)
    centre, paper_before = warm.mean_strategy(), paper.mean_strategy()
    assert paper.update(paper.sample(1, g), [-0.80])  # the paper's controller steps on the entropy bonus alone
    assert np.abs(paper.mean_strategy() - paper_before).max() > 0.01
    assert not warm.update(warm.sample(1, g), [-0.80])  # advantage 0: nothing to learn, the centre is kept
    assert warm.n_updates == 0 and warm.baseline == pytest.approx(0.80)
    assert np.abs(warm.mean_strategy() - centre).max() < 0.05
    assert warm.update(warm.sample(1, g), [-0.79])  # the second reward carries an advantage: PPO steps
    assert warm.n_updates == 1


def test_hill_climbing_moves_one_grid_step_and_keeps_the_best() -> None:
    hc, g = make_searcher("hill-discrete", DIMS, start=[0.5] * DIMS), torch.Generator().manual_seed(0)
    first = hc.sample(1, g)[0]
    assert first["unit"] == [0.5] * DIMS
    hc.update([first], [-0.5])
    neighbour = hc.sample(1, g)[0]
    diff = np.abs(np.asarray(neighbour["unit"]) - 0.5)
    assert np.count_nonzero(diff > 1e-9) == 1 and diff.max() == pytest.approx(0.1)
    hc.update([neighbour], [-0.4])  # worse: rejected
    assert np.allclose(hc.best(), 0.5)
    hc.update([neighbour], [-0.6])  # better: accepted
    assert np.allclose(hc.best(), neighbour["unit"])


def test_search_cli_refuses_bad_starts(tmp_path, capsys) -> None:
    from nnunet_autoaug.rl.cli import main

    with pytest.raises(SystemExit):
        main(["-o", str(tmp_path / "none"), "--resume"])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-o", str(tmp_path / "x")])
    assert "-d/--dataset is required" in capsys.readouterr().err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "search_args.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["-o", str(tmp_path / "old"), "-d", "990"])
    assert "already holds a search" in capsys.readouterr().err


def _experiment_state(statuses: dict[str, str], iteration: int) -> str:
    trials = [[json.dumps({"trial_id": t, "status": s}), json.dumps({"last_result_time": 1.0, "num_failures": 0})]
              for t, s in statuses.items()]
    return json.dumps({"trial_data": trials, "runner_data": {"_iteration": iteration}})


def test_driver_snapshot_follows_trial_changes_and_replaces_a_torn_tune_state(tmp_path) -> None:
    pytest.importorskip("ray")
    from types import SimpleNamespace

    from nnunet_autoaug.rl.tune_snapshot import SNAPSHOT_FILE, TuneStateSnapshot, put_back

    staging, out, experiment = tmp_path / "staging", tmp_path / "out", tmp_path / "out" / "ray" / "rl_search"
    staging.mkdir()
    experiment.mkdir(parents=True)
    storage = SimpleNamespace(experiment_driver_staging_path=str(staging))
    trial_a = SimpleNamespace(trial_id="a", status="RUNNING", storage=storage,
                              run_metadata=SimpleNamespace(last_result_time=1.0, num_failures=0))
    snapshot, callback = out / SNAPSHOT_FILE, TuneStateSnapshot(str(out))

    def tune_step(iteration: int, trials: list, saved: dict[str, str] | None) -> dict | None:
        """One Tune step: ``saved`` are the staging files Tune wrote in it (then it asks callbacks for their state)."""
        for name, text in (saved or {}).items():
            (staging / name).write_text(text)
        if saved is not None:
            assert callback.get_state() is None  # no callback state file of ours
        callback.on_step_end(iteration, trials)
        return pickle.loads(snapshot.read_bytes()) if snapshot.exists() else None

    assert tune_step(0, [trial_a], {}) is None  # nothing saved by Tune yet
    (staging / ".123-tmp-searcher-state-s1.pkl").write_bytes(b"half written")
    first = tune_step(1, [trial_a], {"experiment_state-s1.json": _experiment_state({"a": "RUNNING"}, 1),
                                     "searcher-state-s1.pkl": "searcher 1"})
    assert set(first["files"]) == {"experiment_state-s1.json", "searcher-state-s1.pkl"}
    state_2 = {"experiment_state-s1.json": _experiment_state({"a": "RUNNING"}, 2)}
    assert tune_step(2, [trial_a], state_2)["iteration"] == 1  # only Tune's step counter moved: not rewritten
    trial_a.status = "TERMINATED"
    trial_b = SimpleNamespace(**{**vars(trial_a), "trial_id": "b", "status": "PENDING"})
    assert tune_step(3, [trial_a, trial_b], None)["iteration"] == 1  # trials changed, but Tune saved nothing yet
    state_4 = {"experiment_state-s1.json": _experiment_state({"a": "TERMINATED", "b": "PENDING"}, 4),
               "searcher-state-s1.pkl": "searcher 2"}
    assert tune_step(4, [trial_a, trial_b], state_4)["files"]["searcher-state-s1.pkl"] == b"searcher 2"
    # the search generator's counters alone changed (the small json is compared, the pickles are not)
    assert tune_step(5, [trial_a, trial_b], {"searcher-state-s1.pkl": "searcher 3"})["iteration"] == 4
    assert tune_step(6, [trial_a, trial_b], {"search_gen_state-s1.json": '{"counter": 2}'})["iteration"] == 6
    assert tune_step(7, [trial_a, trial_b], {"search_gen_state-s1.json": '{"counter": 3}'})["iteration"] == 7
    # the final save at the end of the search (forced; no step end follows it) is stored too
    trial_b.status = "TERMINATED"
    (staging / "experiment_state-s1.json").write_text(_experiment_state({"a": "TERMINATED", "b": "TERMINATED"}, 8))
    before = snapshot.read_bytes()
    callback.on_experiment_end([trial_a, trial_b])
    assert snapshot.read_bytes() == before  # Tune has not saved since step 7: nothing to store
    callback.get_state()
    callback.on_experiment_end([trial_a, trial_b])
    final = pickle.loads(snapshot.read_bytes())
    trial_data = json.loads(final["files"]["experiment_state-s1.json"])["trial_data"]
    assert final["iteration"] == 7 and [json.loads(t)["status"] for t, _ in trial_data] == ["TERMINATED"] * 2

    # Tune's copy in -o/ray: stale trial list, no searcher file, a state file of no snapshot; tuner.pkl stays
    (experiment / "experiment_state-s1.json").write_text(_experiment_state({"a": "RUNNING"}, 1))
    (experiment / "search_gen_state-s0.json").write_text("{}")
    (experiment / "tuner.pkl").write_bytes(b"tuner")
    message = put_back(out, experiment)
    assert "step 7" in message and "searcher-state-s1.pkl" in message
    assert sorted(p.name for p in experiment.iterdir()) == ["experiment_state-s1.json", "search_gen_state-s1.json",
                                                             "searcher-state-s1.pkl", "tuner.pkl"]
    assert json.loads((experiment / "experiment_state-s1.json").read_text())["runner_data"]["_iteration"] == 8
    assert (experiment / "search_gen_state-s1.json").read_text() == '{"counter": 3}'
    assert put_back(tmp_path / "no_snapshot", experiment) is None
    snapshot.write_bytes(pickle.dumps({"version": 99, "files": {}}))
    with pytest.raises(ValueError, match="snapshot version 99.*delete the file"):
        put_back(out, experiment)
