"""Tree problems: TreeEnv and the registry of gap families."""

from gvgap.envs.tree_env import TreeEnv, make_env, make_ref_policy, random_ref_policy

__all__ = ["TreeEnv", "make_env", "make_ref_policy", "random_ref_policy"]
