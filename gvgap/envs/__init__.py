"""Tree problems: TreeEnv and the registry of gap families."""

from gvgap.envs.families import FAMILIES, Family, gap_descriptor, make_family
from gvgap.envs.tree_env import TreeEnv, make_env, make_ref_policy, random_ref_policy

__all__ = [
    "FAMILIES",
    "Family",
    "TreeEnv",
    "gap_descriptor",
    "make_env",
    "make_family",
    "make_ref_policy",
    "random_ref_policy",
]
