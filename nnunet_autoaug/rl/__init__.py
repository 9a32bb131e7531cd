"""RL training-strategy search (Yang et al., MICCAI 2019): strategies (op probabilities + learning rate), the PPO
controller and its baselines, and the Ray Tune search (``nnUNetv2_autoaug_search_rl``). Ray is imported only by the
search itself (``rl.cli``, ``rl.tune_searcher``, ``rl.tune_snapshot``, ``rl.trial``'s trainables); see docs/RL.md."""
from nnunet_autoaug.rl.searchers import SEARCHERS, HillClimbing, PPOController, RandomSearch, make_searcher
from nnunet_autoaug.rl.strategy import DEFAULT_STRATEGY, DIMENSIONS, STRATEGY_VAR, Strategy, StrategyError

__all__ = ["DEFAULT_STRATEGY", "DIMENSIONS", "SEARCHERS", "STRATEGY_VAR", "HillClimbing", "PPOController",
           "RandomSearch", "Strategy", "StrategyError", "make_searcher"]
